/* MKL, linked into torch's CPU library, picks its kernels by CPU vendor: on an AMD CPU it
 * runs generic AVX2 ones even where the CPU has AVX-512. Loaded with RTLD_GLOBAL before
 * torch (server/jobs/mkl_kernels.py), this definition answers MKL's vendor check in place
 * of torch's own copy, so MKL dispatches by the CPU's features. Built by the Makefile. */
int mkl_serv_intel_cpu_true(void) { return 1; }
