/// A uniformly random permutation of 0..<n (Fisher-Yates from the top), drawing one `next()` per
/// swap, so the same RNG position gives the same order on every machine. The discriminator's
/// trainer and the RL objectives shuffle with it.
public func shuffledIndices(_ n: Int, _ rng: inout CounterRNG) -> [Int] {
    var a = Array(0..<n)
    if n > 1 {
        for i in stride(from: n - 1, to: 0, by: -1) {
            let j = Int(rng.next() % UInt64(i + 1))
            a.swapAt(i, j)
        }
    }
    return a
}
