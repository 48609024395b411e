#if DRL_MPI
import CLI
import CMPIShim
import Foundation
import NN
import TensorStream

/// MPI_COMM_WORLD as a data-parallel group, for the tools that run under `mpirun -np K` (`train`,
/// `rlstep`; built only with DRL_MPI=1, docs/scaleout.md).
public final class MPIGroup: DataParallelGroup {
    public let rank: Int
    public let size: Int
    /// The tool's name, for the one line printed when MPI itself fails.
    let tool: String

    /// Joins the world when an MPI launcher started the process (mpirun, or Slurm's `srun
    /// --mpi=pmix`, which sets PMIX_RANK but no OMPI_* variable: `Launch.byMPILauncher`); nil
    /// otherwise, so the MPI build run on its own is the single-process tool.
    public static func join(tool: String) throws -> MPIGroup? {
        guard Launch.byMPILauncher else { return nil }
        var r: Int32 = 0, s: Int32 = 0
        let rc = drl_mpi_init(&r, &s)
        guard rc == 0 else { throw ToolError("MPI_Init failed (MPI error \(rc))") }
        return MPIGroup(rank: Int(r), size: Int(s), tool: tool)
    }

    private init(rank: Int, size: Int, tool: String) { self.rank = rank; self.size = size; self.tool = tool }

    public func sum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        let rc = drl_mpi_sum_float(buffer, count)
        guard rc == 0 else { throw ToolError("MPI_Allreduce failed (MPI error \(rc))") }
    }

    public func sum(_ buffer: UnsafeMutablePointer<Double>, count: Int) throws {
        let rc = drl_mpi_sum_double(buffer, count)
        guard rc == 0 else { throw ToolError("MPI_Allreduce failed (MPI error \(rc))") }
    }

    /// Runs `body` on every rank, then agrees on the outcome: when any rank failed, the lowest
    /// failing rank rethrows its error (ToolMain prints it as the one line) and every other rank
    /// leaves MPI and exits 1 without a word. A phase ends at the same point on every rank, so no
    /// rank waits forever in a collective that another one skipped.
    /// A closed standard output (`| head`) is not a failure for one process (it exits quietly,
    /// status 0), so it is not one here: when no rank failed otherwise, every rank leaves MPI and
    /// exits 0 without a word. Any other failure, on any rank, wins over it.
    /// Phases nest (a step inside the whole run): an error that already went through the
    /// agreement of an inner phase is passed on as it is, without a second one (the other ranks
    /// have left by then).
    public func collective<T>(_ body: () throws -> T) throws -> T {
        var result: T?
        var failure: Error?
        do { result = try body() } catch let agreed as AgreedError { throw agreed } catch { failure = error }
        // The minimum over ranks of: rank (failed), size + rank (closed pipe), 2 size (done).
        var outcome = Int32(failure == nil ? 2 * size : failure is BrokenPipe ? size + rank : rank)
        let rc = drl_mpi_min_int(&outcome)
        guard rc == 0 else {
            fputs("\(tool): error: MPI_Allreduce failed (MPI error \(rc)) on rank \(rank)\n", stderr)
            drl_mpi_abort(1)
            exit(1)
        }
        let lowest = Int(outcome)
        if lowest == 2 * size { return result! }
        if lowest >= size {
            finish()
            exit(0)
        }
        if lowest == rank, let failure {
            let text = (failure as? NamesSettings).map { SettingNames.flags($0.template) } ?? "\(failure)"
            throw AgreedError(message: rank == 0 ? text : "rank \(rank) of \(size): \(text)")
        }
        finish()
        exit(1)
    }

    public func finish() { _ = drl_mpi_finalize() }
}

/// An error every rank has agreed on; the rank that rethrows it prints it (ToolMain).
public struct AgreedError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
#endif
