import Foundation

/// How a data-parallel tool (`train`, `rlstep`) was started, read from the environment.
public enum Launch {
    /// Whether an MPI launcher started this process as a rank: mpirun (`OMPI_COMM_WORLD_SIZE`),
    /// a PMIx launcher such as Slurm's `srun --mpi=pmix` (`PMIX_RANK`; srun sets no OMPI_*
    /// variable), or a PMI-1/2 launcher (`PMI_RANK`).
    public static var byMPILauncher: Bool {
        let env = ProcessInfo.processInfo.environment
        return ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"].contains { env[$0] != nil }
    }

    /// Refuses a process that Slurm started as one of several tasks of a step (`srun -n K`,
    /// K > 1) without an MPI launch: each task would run the whole job alone and all of them
    /// would write the same output, which looks like success. `mpiBuild` says which advice fits.
    public static func refuseReplicatedTasks(mpiBuild: Bool) throws {
        let env = ProcessInfo.processInfo.environment
        guard let tasks = env["SLURM_STEP_NUM_TASKS"].flatMap(Int.init), tasks > 1, !byMPILauncher else { return }
        let advice = mpiBuild
            ? "start the ranks with `srun --mpi=pmix` (Debian's OpenMPI speaks PMIx only)"
            : "this build has no MPI: build it with `make build-mpi` and start it with `srun --mpi=pmix`, or run one task"
        throw ToolError("started as one of \(tasks) Slurm tasks without an MPI launch, so every task would run the whole job alone and write the same output; \(advice)")
    }
}
