/* MKL, linked into torch's CPU library, picks its kernels by CPU vendor: on an AMD CPU it
 * runs generic AVX2 ones even where the CPU has AVX-512. Preloaded (LD_PRELOAD), this
 * definition answers MKL's vendor check in place of torch's own copy, so MKL dispatches by
 * the CPU's features. An opt-in recipe: see README.md beside this file. */
int mkl_serv_intel_cpu_true(void) { return 1; }
