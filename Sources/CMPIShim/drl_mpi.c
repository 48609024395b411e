#include "drl_mpi.h"
#include <limits.h>
#include <mpi.h>

int drl_mpi_init(int *rank, int *size) {
    int rc = MPI_Init(NULL, NULL);
    if (rc != MPI_SUCCESS) return rc;
    // Errors come back as codes (a failing call is reported as one line by the tool).
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if ((rc = MPI_Comm_rank(MPI_COMM_WORLD, rank)) != MPI_SUCCESS) return rc;
    return MPI_Comm_size(MPI_COMM_WORLD, size);
}

int drl_mpi_finalize(void) { return MPI_Finalize(); }

int drl_mpi_sum_float(float *buffer, size_t count) {
    // MPI counts are int: reduce in chunks.
    while (count > 0) {
        int n = count > (size_t)INT_MAX ? INT_MAX : (int)count;
        int rc = MPI_Allreduce(MPI_IN_PLACE, buffer, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        buffer += n; count -= (size_t)n;
    }
    return MPI_SUCCESS;
}

int drl_mpi_sum_double(double *buffer, size_t count) {
    while (count > 0) {
        int n = count > (size_t)INT_MAX ? INT_MAX : (int)count;
        int rc = MPI_Allreduce(MPI_IN_PLACE, buffer, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        buffer += n; count -= (size_t)n;
    }
    return MPI_SUCCESS;
}

int drl_mpi_min_int(int *value) {
    return MPI_Allreduce(MPI_IN_PLACE, value, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
}

void drl_mpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }
