/*
NCCL all-reduce of the gradients across the GPUs of one process: check and benchmark.

What it computes: every GPU (a "rank") holds its own gradients; afterwards every rank holds their
element-wise average over the n ranks, sum / n: what data-parallel training does with the
gradients of its micro-batches before the optimizer step. One process drives every visible GPU:
ncclCommInitAll makes one communicator per GPU, each GPU gets its own stream, and the n calls of
one collective are issued between ncclGroupStart and ncclGroupEnd (one thread cannot block in n
calls that wait for each other).

Shapes: 1, 4, 16 and 64 MiB, and GPT-2 124M's gradients (124,475,904 values: 237.4 MiB in bf16,
474.8 MiB in fp32), each in bf16 and fp32; and 250,000 values (check only, see below).

Build and run (from the repository root; needs nccl.h and libnccl):
    make -C dev/cuda nccl_all_reduce && build-dev-cuda/nccl_all_reduce [link_GBps]
    with NVIDIA's pip wheel instead of a system NCCL (pip install nvidia-nccl-cu13):
    make -C dev/cuda nccl_all_reduce NCCL_INC=<site-packages>/nvidia/nccl/include \
        NCCL_LIBS="-L<site-packages>/nvidia/nccl/lib -l:libnccl.so.2" NCCL_RPATH=<site-packages>/nvidia/nccl/lib
    (or `cmake --build build --target dev_cuda_nccl_all_reduce`, built when CMake finds NCCL)
It uses every GPU that CUDA_VISIBLE_DEVICES leaves visible, one GPU included. NVLink SHARP
(NCCL_NVLS_ENABLE) stays off unless the environment sets it: the shared machines this was written
for forbid NVLink multicast.

Versions:
  ncclAvg          one call, NCCL averages as it reduces (every size)
  ncclSum + scale  a sum, then a kernel that divides by n in place: one more read and write of the
                   buffer (the model's size only, for comparison)
Timed out-of-place (sendbuff != recvbuff, like nccl-tests' first column); training reduces in
place, which is checked at the model's size.

Rates (nccl-tests' definitions): algbw = bytes / time; busbw = algbw * 2(n-1)/n, the traffic each
GPU sends (and receives) per second in a ring all-reduce, comparable across n. Limits:
  n = 1: there is nothing to communicate. Out-of-place, NCCL copies sendbuff to recvbuff on the
         GPU (in place there is nothing to do), so the time is that of a local device copy and busbw
         is 0. The row prints that copy's rate (read + write, 2 * bytes / time) as a % of the
         device-to-device copy bandwidth measured in the same run: how close NCCL's one-GPU path
         comes to a cudaMemcpy, and NCCL's fixed cost per call at the small sizes. It says
         nothing about communication.
  n > 1: busbw as a % of the NVLink bandwidth of one GPU in one direction: 450 GB/s by default,
         H100/H200 SXM (NVLink 4: 18 links of 25 GB/s each way; NVIDIA's "900 GB/s" counts both
         directions). Without NVLink SHARP busbw cannot exceed it. Another figure can be given as
         the argument (e.g. for PCIe or other GPUs).

Checks: for every size and type, fresh random inputs per rank (normal(0, 1) rounded to the type;
the three variants at the model's size share theirs), the result on every rank against the fp64
CPU average of the inputs, to 2^-8 n (bf16: every addition along the ring or tree rounds to bf16)
or 1e-6 n (fp32) of the largest value; the receive buffer is poisoned with NaN first; all ranks
must hold the same bits. Then the call is timed with CUDA events on every GPU's stream (5 warm-up
calls, median over 20 calls of the slowest GPU's time). About 10 s on one GPU, most of it the CPU
side, which grows with n.
Known NCCL bug (check_one_rank_tail has the details): before NCCL 2.29.7, ncclAvg on a one-rank
communicator leaves the last count % 32 (or fewer-block) values of recvbuff unwritten
(NVIDIA/nccl#1950). The first version of this program timed 1 MB = 10^6 bytes, and its fp32 size
(250,000 values) failed on one H200 with NCCL 2.28.3: the last 16 values were still NaN. The timed
sizes are whole MiB now; a separate check keeps the 250,000-value case, reported as "known" (not
a failure) when it shows exactly that bug's signature on NCCL < 2.29.7 with one GPU.
*/
#include <math.h>
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "llmc/rand.h"
#include "common.cuh"

static inline void nccl_check_impl(ncclResult_t r, const char* file, int line) {
    if (r != ncclSuccess) {
        fprintf(stderr, "NCCL error at %s:%d: %s\n", file, line, ncclGetErrorString(r));
        exit(1);
    }
}
#define ncclCheck(call) nccl_check_impl((call), __FILE__, __LINE__)

static const int WARMUP = 5, REPS = 20;
static const size_t MODEL_VALUES = 124475904;  // GPT-2 124M's parameters (and gradients)

template <typename T>
static ncclDataType_t nccl_type();
template <>
ncclDataType_t nccl_type<float>() {
    return ncclFloat32;
}
template <>
ncclDataType_t nccl_type<__nv_bfloat16>() {
    return ncclBfloat16;
}
template <typename T>
static const char* type_name();
template <>
const char* type_name<float>() {
    return "fp32";
}
template <>
const char* type_name<__nv_bfloat16>() {
    return "bf16";
}

// x = x / n, in place: the second pass of "ncclSum + scale"
template <typename T>
__global__ void divide_kernel(T* x, size_t count, float n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) x[i] = from_float<T>(to_float(x[i]) / n);
}

// one GPU: its communicator, stream, buffers (room for the largest size) and timing events
struct Rank {
    int device;
    ncclComm_t comm;
    cudaStream_t stream;
    void* send;
    void* recv;
    cudaEvent_t start, stop;
};

// roughly normal(0, 1), one 64-bit draw per value: the sum of four 16-bit uniforms (Irwin-Hall),
// fast enough for hundreds of millions of values (Box-Muller would take a minute)
static float fast_normal(Rng* rng) {
    const uint64_t r = rng_next_u64(rng);
    float s = 0.0f;
    for (int k = 0; k < 4; k++) s += (float)((r >> (16 * k)) & 0xFFFF);
    return (s - 131070.0f) * (1.0f / 37837.2f);  // mean 4 * 32767.5, std 65536 / sqrt(3)
}

enum Variant { AVG_OUT_OF_PLACE, AVG_IN_PLACE, SUM_THEN_SCALE };
static const char* VARIANT_NAMES[3] = {"ncclAvg", "ncclAvg in place", "ncclSum + scale"};

// issues one all-reduce of `count` values on every rank (and, for SUM_THEN_SCALE, the division)
template <typename T>
static void all_reduce(std::vector<Rank>& ranks, size_t count, Variant variant) {
    const int n = (int)ranks.size();
    ncclCheck(ncclGroupStart());
    for (Rank& r : ranks) {
        void* src = variant == AVG_IN_PLACE ? r.recv : r.send;
        const ncclRedOp_t op = variant == SUM_THEN_SCALE ? ncclSum : ncclAvg;
        ncclCheck(ncclAllReduce(src, r.recv, count, nccl_type<T>(), op, r.comm, r.stream));
    }
    ncclCheck(ncclGroupEnd());
    if (variant == SUM_THEN_SCALE) {
        for (Rank& r : ranks) {
            cudaCheck(cudaSetDevice(r.device));
            divide_kernel<T><<<(unsigned)ceil_div_sz(count, 256), 256, 0, r.stream>>>((T*)r.recv, count, (float)n);
            cudaCheckLast();
        }
    }
}

static void synchronize_all(std::vector<Rank>& ranks) {
    for (Rank& r : ranks) {
        cudaCheck(cudaSetDevice(r.device));
        cudaCheck(cudaStreamSynchronize(r.stream));
    }
}

// median over REPS calls of the slowest rank's time (CUDA events on each rank's stream), in ms
template <typename T>
static double time_all_reduce(std::vector<Rank>& ranks, size_t count, Variant variant) {
    for (int i = 0; i < WARMUP; i++) all_reduce<T>(ranks, count, variant);
    synchronize_all(ranks);
    std::vector<float> times(REPS);
    for (int rep = 0; rep < REPS; rep++) {
        for (Rank& r : ranks) {
            cudaCheck(cudaSetDevice(r.device));
            cudaCheck(cudaEventRecord(r.start, r.stream));
        }
        all_reduce<T>(ranks, count, variant);
        for (Rank& r : ranks) {
            cudaCheck(cudaSetDevice(r.device));
            cudaCheck(cudaEventRecord(r.stop, r.stream));
        }
        float slowest = 0.0f;
        for (Rank& r : ranks) {
            cudaCheck(cudaSetDevice(r.device));
            cudaCheck(cudaEventSynchronize(r.stop));
            float ms = 0.0f;
            cudaCheck(cudaEventElapsedTime(&ms, r.start, r.stop));
            slowest = std::max(slowest, ms);
        }
        times[rep] = slowest;
    }
    std::sort(times.begin(), times.end());
    return times[REPS / 2];
}

// every rank's inputs (fresh random values, rounded to T) and their fp64 average
template <typename T>
struct Inputs {
    size_t count;
    std::vector<std::vector<T>> rank;
    std::vector<double> average;
};

template <typename T>
static Inputs<T> random_inputs(int n, size_t count, Rng* rng) {
    Inputs<T> in;
    in.count = count;
    in.rank.assign(n, std::vector<T>(count));
    in.average.assign(count, 0.0);
    for (int r = 0; r < n; r++) {
        for (size_t i = 0; i < count; i++) {
            in.rank[r][i] = from_float<T>(fast_normal(rng));
            in.average[i] += (double)to_float(in.rank[r][i]);
        }
    }
    for (size_t i = 0; i < count; i++) in.average[i] /= n;
    return in;
}

template <typename T>
static double tolerance(int n) {
    return sizeof(T) == 2 ? (1.0 / 256) * n : 1e-6 * n;
}

// uploads the inputs (to recv when in place, else to send, with recv poisoned with NaN), runs one
// all-reduce and returns every rank's result. Uploads, poisoning, the collective and the read-back
// all go through the rank's own stream, with the device synchronized before the collective, so their
// order does not rest on the legacy default stream's implicit synchronization.
template <typename T>
static std::vector<std::vector<T>> reduce_and_read(std::vector<Rank>& ranks, const Inputs<T>& in, Variant variant) {
    const size_t count = in.count;
    for (size_t k = 0; k < ranks.size(); k++) {
        Rank& r = ranks[k];
        cudaCheck(cudaSetDevice(r.device));
        void* dst = variant == AVG_IN_PLACE ? r.recv : r.send;
        cudaCheck(cudaMemcpyAsync(dst, in.rank[k].data(), count * sizeof(T), cudaMemcpyHostToDevice, r.stream));
        if (variant != AVG_IN_PLACE) cudaCheck(cudaMemsetAsync(r.recv, 0xFF, count * sizeof(T), r.stream));
        cudaCheck(cudaDeviceSynchronize());
    }
    all_reduce<T>(ranks, count, variant);
    synchronize_all(ranks);
    std::vector<std::vector<T>> out(ranks.size(), std::vector<T>(count));
    for (size_t k = 0; k < ranks.size(); k++) {
        Rank& r = ranks[k];
        cudaCheck(cudaSetDevice(r.device));
        cudaCheck(cudaMemcpyAsync(out[k].data(), r.recv, count * sizeof(T), cudaMemcpyDeviceToHost, r.stream));
        cudaCheck(cudaStreamSynchronize(r.stream));
    }
    return out;
}

// the values of got that are wrong (not finite, or off the fp64 average by more than tol times
// max(1, |average|)): how many, the first and the last
struct WrongValues {
    size_t count = 0, first = 0, last = 0;
    bool all_nan = true;  // every wrong value is still the NaN poison (never written)
};

template <typename T>
static WrongValues wrong_values(const std::vector<T>& got, const std::vector<double>& average, double tol) {
    WrongValues w;
    for (size_t i = 0; i < got.size(); i++) {
        const double o = (double)to_float(got[i]);
        if (isfinite(o) && fabs(o - average[i]) <= tol * std::max(1.0, fabs(average[i]))) continue;
        if (w.count++ == 0) w.first = i;
        w.last = i;
        w.all_nan = w.all_nan && isnan(o);
    }
    return w;
}

// every rank's result against the fp64 average; returns the worst relative error (infinity when
// the ranks disagree or a value is not finite). A failure prints how many values are wrong.
template <typename T>
static double check_all_reduce(std::vector<Rank>& ranks, const Inputs<T>& in, Variant variant) {
    const std::vector<std::vector<T>> got = reduce_and_read<T>(ranks, in, variant);
    const double tol = tolerance<T>((int)ranks.size());
    double worst = 0.0;
    for (size_t k = 0; k < ranks.size(); k++) {
        const double err = bench::rel_error(got[k], in.average);
        if (!(err <= tol)) {
            const WrongValues w = wrong_values(got[k], in.average, tol);
            printf("      rank %zu: %zu of %zu values wrong (first %zu, last %zu)%s\n", k, w.count, in.count, w.first,
                   w.last, w.all_nan ? ", all never written (NaN poison)" : "");
        }
        worst = std::max(worst, err);
        if (!bench::same_bits(got[0], got[k])) worst = INFINITY;
    }
    return worst;
}

// NVIDIA/nccl#1950, fixed in NCCL 2.29.7: on a one-rank communicator, ncclAllReduce with ncclAvg
// runs NCCL's one-rank reduction kernel, which splits the count over its blocks (at most 32) with a
// floor division, so when the count is not a multiple of the block count the last count % blocks
// values of recvbuff are never written. It is what made this program's first fp32 size, 1 MB =
// 250,000 values (250,000 % 32 = 16), fail with NCCL 2.28.3 on one GPU: the last 16 values were
// still the NaN poison, while 500,000 bf16 values (a multiple of 32) and every larger size passed.
// Out-of-place only: in place, the unwritten values keep the input, which on one rank is the
// average. The timed sizes are now whole MiB (counts multiples of 32); this check keeps the case
// that shows the bug. With NCCL older than 2.29.7 on one GPU, a result whose only wrong values are
// a run of never-written values at the end is reported as this known bug and not counted as a
// failure; any other wrong value, or any wrong value with a newer NCCL or more GPUs, fails.
template <typename T>
static void check_one_rank_tail(std::vector<Rank>& ranks, Rng* rng, int nccl_version) {
    const int n = (int)ranks.size();
    const size_t count = 250000;
    const Inputs<T> in = random_inputs<T>(n, count, rng);
    const std::vector<std::vector<T>> got = reduce_and_read<T>(ranks, in, AVG_OUT_OF_PLACE);
    const double tol = tolerance<T>(n);
    char what[128];
    snprintf(what, sizeof(what), "ncclAvg, %s, count %zu (not a multiple of 32), n=%d", type_name<T>(), count, n);
    const bool known = n == 1 && nccl_version < 22907;
    double worst = 0.0;
    bool known_seen = false;
    for (size_t k = 0; k < ranks.size(); k++) {
        const WrongValues w = wrong_values(got[k], in.average, tol);
        if (w.count == 0) {
            worst = std::max(worst, bench::rel_error(got[k], in.average));
        } else if (known && w.all_nan && w.last == count - 1 && w.last - w.first + 1 == w.count && w.count < 32) {
            printf("known  %s: the last %zu values were never written: NCCL bug NVIDIA/nccl#1950 (one-rank "
                   "ncclAvg, fixed in 2.29.7), not counted as a failure\n",
                   what, w.count);
            known_seen = true;
        } else {
            printf("      rank %zu: %zu of %zu values wrong (first %zu, last %zu)\n", k, w.count, count, w.first,
                   w.last);
            worst = INFINITY;
        }
    }
    if (!known_seen || worst > 0.0) bench::check(what, worst, tol);
}

static std::string size_text(size_t bytes) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%.1f MiB", bytes / 1048576.0);
    return buf;
}

// check, time and print one RESULT line
template <typename T>
static void measure(std::vector<Rank>& ranks, const Inputs<T>& in, Variant variant, double copy_gbs,
                    double link_gbs) {
    const int n = (int)ranks.size();
    const size_t count = in.count;
    const double bytes = (double)count * sizeof(T);
    const double err = check_all_reduce<T>(ranks, in, variant);
    const double tol = tolerance<T>(n);
    char kernel[128];
    snprintf(kernel, sizeof(kernel), "nccl all-reduce avg, %s, %s%s (n=%d GPU%s)", type_name<T>(),
             size_text((size_t)bytes).c_str(), count == MODEL_VALUES ? " = GPT-2 124M" : "", n, n == 1 ? "" : "s");
    if (variant == AVG_IN_PLACE) {  // checked, not timed
        char what[160];
        snprintf(what, sizeof(what), "%s, %s", kernel, VARIANT_NAMES[variant]);
        bench::check(what, err, tol);
        return;
    }
    bench::checks++;
    if (!(err <= tol)) bench::failures++;
    const double ms = time_all_reduce<T>(ranks, count, variant);
    const double algbw = bytes / (ms * 1e-3) / 1e9;
    const double busbw = algbw * 2.0 * (n - 1) / n;
    char rate[64], limit[64];
    snprintf(rate, sizeof(rate), "algbw %.1f GB/s, busbw %.1f GB/s", algbw, busbw);
    if (n == 1) {
        snprintf(limit, sizeof(limit), "%.1f%% of copy (n=1: a local copy)", 100.0 * 2.0 * algbw / copy_gbs);
    } else {
        snprintf(limit, sizeof(limit), "%.1f%% of NVLink %.0f GB/s", 100.0 * busbw / link_gbs, link_gbs);
    }
    bench::result_line(kernel, VARIANT_NAMES[variant], bench::format_time(ms), rate, limit, bench::verdict(err, tol));
}

template <typename T>
static void run_type(std::vector<Rank>& ranks, Rng* rng, double copy_gbs, double link_gbs, int nccl_version) {
    const int n = (int)ranks.size();
    const size_t mebibytes[4] = {1, 4, 16, 64};
    for (size_t mib : mebibytes) {
        measure<T>(ranks, random_inputs<T>(n, mib * 1048576 / sizeof(T), rng), AVG_OUT_OF_PLACE, copy_gbs, link_gbs);
    }
    check_one_rank_tail<T>(ranks, rng, nccl_version);
    // the model's gradients: the three variants on the same inputs
    const Inputs<T> model = random_inputs<T>(n, MODEL_VALUES, rng);
    measure<T>(ranks, model, AVG_OUT_OF_PLACE, copy_gbs, link_gbs);
    measure<T>(ranks, model, AVG_IN_PLACE, copy_gbs, link_gbs);
    measure<T>(ranks, model, SUM_THEN_SCALE, copy_gbs, link_gbs);
}

int main(int argc, char** argv) {
    double link_gbs = 450.0;  // NVLink 4 (H100/H200 SXM), one direction, one GPU
    if (argc == 2) {
        char* end = NULL;
        link_gbs = strtod(argv[1], &end);
        if (end == argv[1] || *end != '\0' || !(link_gbs > 0.0)) {
            fprintf(stderr, "error: link_GBps must be a positive number, got '%s'\n", argv[1]);
            return 1;
        }
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [link_GBps]   (per-GPU, per-direction NVLink bandwidth; default 450)\n", argv[0]);
        return 1;
    }
    setenv("NCCL_NVLS_ENABLE", "0", 0);  // 0: keeps a value the environment already sets

    int n = 0;
    cudaCheck(cudaGetDeviceCount(&n));
    int version = 0;
    ncclCheck(ncclGetVersion(&version));
    printf("nccl_all_reduce: %d GPU%s, NCCL %d.%d.%d, NCCL_NVLS_ENABLE=%s\n", n, n == 1 ? "" : "s",
           version / 10000, (version / 100) % 100, version % 100, getenv("NCCL_NVLS_ENABLE"));
    for (int d = 0; d < n; d++) {
        cudaDeviceProp prop;
        cudaCheck(cudaGetDeviceProperties(&prop, d));
        printf("  GPU %d: %s\n", d, prop.name);
    }
    cudaCheck(cudaSetDevice(0));
    const double copy_gbs = bench::copy_bandwidth_gbs();

    std::vector<Rank> ranks(n);
    std::vector<ncclComm_t> comms(n);
    std::vector<int> devices(n);
    for (int d = 0; d < n; d++) devices[d] = d;
    ncclCheck(ncclCommInitAll(comms.data(), n, devices.data()));
    const size_t max_bytes = MODEL_VALUES * sizeof(float);
    for (int d = 0; d < n; d++) {
        Rank& r = ranks[d];
        r.device = d;
        r.comm = comms[d];
        cudaCheck(cudaSetDevice(d));
        cudaCheck(cudaStreamCreate(&r.stream));
        cudaCheck(cudaMalloc(&r.send, max_bytes));
        cudaCheck(cudaMalloc(&r.recv, max_bytes));
        cudaCheck(cudaEventCreate(&r.start));
        cudaCheck(cudaEventCreate(&r.stop));
    }

    Rng rng;
    rng_init(&rng, 42);
    run_type<__nv_bfloat16>(ranks, &rng, copy_gbs, link_gbs, version);
    run_type<float>(ranks, &rng, copy_gbs, link_gbs, version);

    for (Rank& r : ranks) {
        cudaCheck(cudaSetDevice(r.device));
        ncclCheck(ncclCommDestroy(r.comm));
        cudaCheck(cudaStreamDestroy(r.stream));
        cudaCheck(cudaFree(r.send));
        cudaCheck(cudaFree(r.recv));
        cudaCheck(cudaEventDestroy(r.start));
        cudaCheck(cudaEventDestroy(r.stop));
    }
    return bench::finish();
}
