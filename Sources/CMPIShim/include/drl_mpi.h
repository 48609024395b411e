#ifndef DRL_MPI_H
#define DRL_MPI_H
#include <stddef.h>

// The few MPI calls the data-parallel update needs, on MPI_COMM_WORLD (a macro over a global
// struct in OpenMPI, which Swift cannot import). Each returns 0 on success, else MPI's error code.
int drl_mpi_init(int *rank, int *size);
int drl_mpi_finalize(void);
// In-place sums over every rank.
int drl_mpi_sum_float(float *buffer, size_t count);
int drl_mpi_sum_double(double *buffer, size_t count);
// In-place minimum of one int over every rank.
int drl_mpi_min_int(int *value);
void drl_mpi_abort(int code);
#endif
