import CBLAS
#if canImport(Glibc)
import Glibc
#endif

/// Thin, row-major wrappers over OpenBLAS. All matrix work in the toolkit goes through these,
/// so the calling convention (row-major, leading dimensions) is decided in one place.
public enum BLAS {
    /// Sets how many threads OpenBLAS may use. Pipelines run several tools at once, and
    /// OpenBLAS threads busy-wait, so every tool sets this from its `--threads` option.
    /// The layers' own loops follow the same setting (`Parallel`).
    public static func setThreads(_ n: Int) {
        if n > 1 { shortenThreadSpin() }
        openblas_set_num_threads(Int32(max(1, n)))
        Parallel.setWorkers(n)
    }

    /// OpenBLAS's idle threads spin (sched_yield) for 2^28 cycles after every GEMM before they
    /// sleep, so they steal the core from the layers' own loops that run between GEMMs: 10-20%
    /// of a sit-tiny training step on 2 cores (docs/engine.md). 2^10 cycles makes them sleep at
    /// once. OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when it loads, before any Swift code, so this
    /// sets it, has OpenBLAS read its environment again and restarts its thread pool; the next
    /// call starts the threads with the short timeout. A user's own OPENBLAS_THREAD_TIMEOUT wins.
    /// Both entry points are looked up at run time: a BLAS without them just keeps its default.
    private nonisolated(unsafe) static var spinShortened = false
    private static func shortenThreadSpin() {
        guard !spinShortened else { return }
        spinShortened = true
        guard getenv("OPENBLAS_THREAD_TIMEOUT") == nil,
              let readEnv = dlsym(nil, "openblas_read_env"),
              let shutdown = dlsym(nil, "blas_thread_shutdown_") else { return }
        setenv("OPENBLAS_THREAD_TIMEOUT", "10", 0)
        unsafeBitCast(readEnv, to: (@convention(c) () -> Void).self)()
        _ = unsafeBitCast(shutdown, to: (@convention(c) () -> Int32).self)()
    }

    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// The OpenBLAS kernel family in use ("Prescott", "SkylakeX", "Haswell", ...), chosen when the
    /// library loads (override with the OPENBLAS_CORETYPE environment variable).
    public static var coreName: String {
        guard let name = openblas_get_corename() else { return "unknown" }
        return String(cString: name)
    }

    /// C[m,n] = alpha * op(A) * op(B) + beta * C, row-major, float32.
    /// op(A) is [m,k] (A stored [k,m] when transA), op(B) is [k,n] (B stored [n,k] when transB).
    @inline(__always)
    public static func sgemm(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int? = nil,
        b: UnsafePointer<Float>, ldb: Int? = nil,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int? = nil
    ) {
        cblas_sgemm(
            CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha,
            a, Int32(lda ?? (transA ? m : k)),
            b, Int32(ldb ?? (transB ? k : n)),
            beta, c, Int32(ldc ?? n))
    }

    /// Float64 version of `sgemm`.
    @inline(__always)
    public static func dgemm(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Double = 1, a: UnsafePointer<Double>, lda: Int? = nil,
        b: UnsafePointer<Double>, ldb: Int? = nil,
        beta: Double = 0, c: UnsafeMutablePointer<Double>, ldc: Int? = nil
    ) {
        cblas_dgemm(
            CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha,
            a, Int32(lda ?? (transA ? m : k)),
            b, Int32(ldb ?? (transB ? k : n)),
            beta, c, Int32(ldc ?? n))
    }

    /// C[n,n] (upper triangle, row-major) = alpha * A^T A + beta * C, with A stored [k,n]
    /// (rows are samples); float64. Only the upper triangle of C is read and written.
    @inline(__always)
    public static func dsyrkUpperAtA(
        n: Int, k: Int, alpha: Double = 1, a: UnsafePointer<Double>, lda: Int? = nil,
        beta: Double = 1, c: UnsafeMutablePointer<Double>, ldc: Int? = nil
    ) {
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(n), Int32(k), alpha,
                    a, Int32(lda ?? n), beta, c, Int32(ldc ?? n))
    }

    /// C[n,n] (upper triangle, row-major) = alpha * A A^T + beta * C, with A stored [n,k]; float64.
    @inline(__always)
    public static func dsyrkUpperAAt(
        n: Int, k: Int, alpha: Double = 1, a: UnsafePointer<Double>, lda: Int? = nil,
        beta: Double = 0, c: UnsafeMutablePointer<Double>, ldc: Int? = nil
    ) {
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, Int32(n), Int32(k), alpha,
                    a, Int32(lda ?? k), beta, c, Int32(ldc ?? n))
    }

    /// C[m,n] = alpha * A B + beta * C with A [m,m] symmetric (upper triangle read), row-major; float64.
    @inline(__always)
    public static func dsymmLeftUpper(
        m: Int, n: Int, alpha: Double = 1, a: UnsafePointer<Double>, lda: Int? = nil,
        b: UnsafePointer<Double>, ldb: Int? = nil,
        beta: Double = 0, c: UnsafeMutablePointer<Double>, ldc: Int? = nil
    ) {
        cblas_dsymm(CblasRowMajor, CblasLeft, CblasUpper, Int32(m), Int32(n), alpha,
                    a, Int32(lda ?? m), b, Int32(ldb ?? n), beta, c, Int32(ldc ?? n))
    }

    /// B[m,n] = alpha * op(A) B (left) or alpha * B op(A) (right), A triangular (upper when
    /// `upper`), row-major, float64, in place.
    @inline(__always)
    public static func dtrmm(
        left: Bool, upper: Bool, transA: Bool, m: Int, n: Int, alpha: Double = 1,
        a: UnsafePointer<Double>, lda: Int, b: UnsafeMutablePointer<Double>, ldb: Int? = nil
    ) {
        cblas_dtrmm(CblasRowMajor, left ? CblasLeft : CblasRight, upper ? CblasUpper : CblasLower,
                    transA ? CblasTrans : CblasNoTrans, CblasNonUnit, Int32(m), Int32(n), alpha,
                    a, Int32(lda), b, Int32(ldb ?? n))
    }

    /// Debian's OpenBLAS 0.3.21 does not know recent Intel models (Sapphire/Emerald Rapids) and
    /// falls back to its generic SSE3 "Prescott" kernels, several times slower in float64 GEMM and
    /// syrk. OpenBLAS picks its kernels when the library loads, so the only cure is the
    /// `OPENBLAS_CORETYPE` variable at process start: when it is unset, the detected core is
    /// Prescott and /proc/cpuinfo shows AVX-512 (-> SkylakeX) or AVX2+FMA (-> Haswell), this
    /// re-executes the current program (same arguments and descriptors; nothing has been read yet)
    /// with the variable set. Call it first thing in `main`. It never overrides a value the
    /// environment already sets (some machines set one on purpose), and `DRL_BLAS_REEXEC=0`
    /// turns it off. Returns only when no re-exec happened.
    public static func preferNativeKernels() {
        guard getenv("OPENBLAS_CORETYPE") == nil, getenv("DRL_BLAS_REEXEC") == nil else { return }
        guard coreName.lowercased() == "prescott" else { return }
        guard let cpuinfo = readWholeFile("/proc/cpuinfo") else { return }
        let text = String(decoding: cpuinfo.prefix(200_000), as: UTF8.self)
        guard let flagsLine = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return }
        let flags = Set(flagsLine.split(separator: " ").map(String.init))
        let core: String
        if ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"].allSatisfy(flags.contains) {
            core = "SkylakeX"
        } else if ["avx2", "fma"].allSatisfy(flags.contains) {
            core = "Haswell"
        } else {
            return
        }
        setenv("OPENBLAS_CORETYPE", core, 1)
        setenv("DRL_BLAS_REEXEC", "1", 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // execv returned: carry on with the generic kernels.
        unsetenv("OPENBLAS_CORETYPE")
    }
}

/// LAPACK through its Fortran ABI (Debian ships no LAPACKE). Symmetric matrices are the same in
/// row- and column-major order, so callers pass row-major buffers unchanged.
public enum LAPACK {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Eigen-decomposition of a symmetric n x n matrix (upper triangle read, row-major or
    /// column-major alike) by divide and conquer (dsyevd). Returns the eigenvalues in ascending
    /// order. With `vectors`, `a` is overwritten so that row j (in row-major terms) is the unit
    /// eigenvector of eigenvalue j; without, `a` is destroyed.
    public static func symmetricEigen(_ a: UnsafeMutablePointer<Double>, n: Int, vectors: Bool) throws -> [Double] {
        guard n > 0 else { return [] }
        var w = [Double](repeating: 0, count: n)
        var jobz: CChar = vectors ? 86 : 78  // "V" / "N"
        // Column-major "L" on a row-major buffer is the row-major upper triangle.
        var uplo: CChar = 76
        var nn = Int32(n), lda = Int32(n), info: Int32 = 0
        var lwork: Int32 = -1, liwork: Int32 = -1
        var wq = 0.0
        var iwq: Int32 = 0
        dsyevd_(&jobz, &uplo, &nn, a, &lda, &w, &wq, &lwork, &iwq, &liwork, &info, 1, 1)
        guard info == 0 else { throw Failure(description: "dsyevd workspace query failed (info \(info))") }
        lwork = Int32(wq.rounded(.up))
        liwork = max(iwq, 1)
        var work = [Double](repeating: 0, count: Int(lwork))
        var iwork = [Int32](repeating: 0, count: Int(liwork))
        dsyevd_(&jobz, &uplo, &nn, a, &lda, &w, &work, &lwork, &iwork, &liwork, &info, 1, 1)
        guard info == 0 else {
            throw Failure(description: info < 0 ? "dsyevd: bad argument \(-info)" : "dsyevd did not converge (info \(info)); the matrix may hold NaN or Inf")
        }
        return w
    }

    /// Cholesky factor of a symmetric positive-definite n x n row-major matrix (upper triangle
    /// read): on success `a` holds U (upper triangle; the strict lower triangle is zeroed) with
    /// A = U^T U, and the result is true. False when A is not numerically positive definite.
    public static func cholesky(_ a: UnsafeMutablePointer<Double>, n: Int) throws -> Bool {
        guard n > 0 else { return true }
        // Column-major "L" on the row-major buffer: the row-major upper triangle, and the
        // column-major factor L is the row-major U = L^T.
        var uplo: CChar = 76
        var nn = Int32(n), lda = Int32(n), info: Int32 = 0
        dpotrf_(&uplo, &nn, a, &lda, &info, 1)
        if info < 0 { throw Failure(description: "dpotrf: bad argument \(-info)") }
        if info > 0 { return false }
        for i in 1..<max(1, n) { for j in 0..<i { a[i * n + j] = 0 } }
        return true
    }
}

/// The bytes of a file read to its end (procfs files report size 0), or nil if it cannot be read.
/// Numerics sits below the stream layer's file helpers, so it carries this small one.
private func readWholeFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out = [UInt8](), buffer = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if n < 0 { if errno == EINTR { continue }; return nil }
        if n == 0 { return out }
        out.append(contentsOf: buffer[0..<n])
    }
}
