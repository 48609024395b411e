import Shared
// Before any BLAS call: switch Debian's OpenBLAS from its generic fallback kernels to the
// native ones where it misdetects the CPU (see BLAS.preferNativeKernels).
BLAS.preferNativeKernels()
ToolMain.run(Fid.self)
