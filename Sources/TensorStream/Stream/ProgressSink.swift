/// Where a long library loop reports how far it got. The library never draws anything itself;
/// the CLI layer's progress bar conforms.
public protocol ProgressSink: AnyObject {
    func advance(_ n: Int, unit: String)
    func finish()
}
