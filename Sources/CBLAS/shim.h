#include <cblas.h>

// Debian's OpenBLAS is built without LAPACKE: LAPACK is inside libopenblas with the Fortran ABI
// only (column-major, every argument by pointer, hidden string lengths last).
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
             double *w, double *work, const int *lwork, int *iwork, const int *liwork,
             int *info, unsigned long jobz_len, unsigned long uplo_len);
void dsyevr_(const char *jobz, const char *range, const char *uplo, const int *n, double *a,
             const int *lda, const double *vl, const double *vu, const int *il, const int *iu,
             const double *abstol, int *m, double *w, double *z, const int *ldz, int *isuppz,
             double *work, const int *lwork, int *iwork, const int *liwork, int *info,
             unsigned long jobz_len, unsigned long range_len, unsigned long uplo_len);
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info,
             unsigned long uplo_len);
void dgesv_(const int *n, const int *nrhs, double *a, const int *lda, int *ipiv, double *b,
            const int *ldb, int *info);
void dgeev_(const char *jobvl, const char *jobvr, const int *n, double *a, const int *lda,
            double *wr, double *wi, double *vl, const int *ldvl, double *vr, const int *ldvr,
            double *work, const int *lwork, int *info, unsigned long jobvl_len,
            unsigned long jobvr_len);
char *openblas_get_corename(void);
