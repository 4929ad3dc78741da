/*
Bulk asynchronous copies and the mbarriers that count them in (Hopper, sm_90 and later).

A bulk copy (cp.async.bulk) is done by the SM's TMA engine: one instruction of one thread moves a
contiguous block of global memory (a multiple of 16 bytes, 16-byte aligned) into shared memory,
holding no registers while it is in flight, and signals an mbarrier in shared memory with its byte
count when it lands. The tensor form (cp.async.bulk.tensor, a 2-D box through a tensor map, written
in a swizzled layout) is the attention kernels' (llmc/attention_hopper.cuh); they share the
mbarrier helpers here.

How an mbarrier is used for copies: one thread initializes it (arrival count 1) and fences the
initialization; before each copy (or group of copies) one thread "arrives" on it announcing the
bytes to expect (expect_tx); the barrier's phase completes when the bytes have landed, and waiters
spin on the parity of the phase they want (0 for its 1st, 3rd, ... use, 1 for the 2nd, 4th, ...).
*/
#ifndef LLMC_BULK_COPY_CUH
#define LLMC_BULK_COPY_CUH

#include <stdint.h>

// shared-memory address of a generic pointer into shared memory, as the PTX operands take it
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
// makes the initializations before it visible to the copy engine (and the other threads, after a
// barrier or __syncwarp)
__device__ __forceinline__ void mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// one arrival without bytes (a consumer telling the producer that it is done with a stage)
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
    asm volatile(
        "{\n.reg .pred done;\nmbar_wait_again:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra mbar_wait_again;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
// bytes (a multiple of 16) from global src (16-byte aligned) to shared dst; bar counts them in
// (the caller announced them with mbar_expect_tx)
__device__ __forceinline__ void bulk_copy_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}


// The other direction: shared src -> global dst (bytes a multiple of 16, both 16-byte aligned),
// written as it is (store) or added element-wise into what is there (reduce_add_f32: fp32 adds
// done at L2, each element's once). Completion is tracked per thread by bulk groups: commit closes
// a group; wait_read<N> returns when at most N groups still read shared memory (src reusable),
// wait<N> when at most N are still writing (their results visible to this thread, and to others
// after a release).
__device__ __forceinline__ void bulk_store_s2g(void* dst, uint32_t src, uint32_t bytes) {
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void bulk_reduce_add_f32_s2g(float* dst, uint32_t src, uint32_t bytes) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void bulk_wait() {
    asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif  // LLMC_BULK_COPY_CUH
