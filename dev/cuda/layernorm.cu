/*
LayerNorm forward (plain and fused with the residual add) and backward: check and benchmark.

What it computes (llmc/layernorm.cuh has the formulas): for N rows of C channels,
  forward        out = (x - mean) * rstd * weight + bias, mean and rstd saved (fp32)
  fused forward  residual = a + b (stored), out = layernorm(residual)
  backward       dinp += dx (the residual stream's gradient), dweight += sum_n dout * xhat,
                 dbias += sum_n dout
Shapes: N = B*T = 65,536 rows, C = 768 by default (GPT-2 124M at B = 64, T = 1024); each (N, C)
tensor is 100 MB in bf16, larger than the L2 cache, so every run reads from DRAM. Before it, every
version is checked (not timed) on small shapes: odd N, the GPT-2 widths 768..1600, C = 2048 and
4096, C = 384 and 512 (v4 with 2 packets per thread in bf16; in fp32 3, and the wider rows'
configuration), C = 8 and 776 (a partial last packet group), C = 99 (no 16-byte packets: only v1
applies).

Build and run (from the repository root):
    make -C dev/cuda layernorm && build-dev-cuda/layernorm [N C] [--no-sweep] [--v4]
    (or: nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -I. dev/cuda/layernorm.cu -o layernorm)
    --no-sweep skips the small-shape checks (e.g. under ncu); --v4 adds the backward candidates
    below (other launch configurations of v3 and v4, the wide partials kernel).
    Add -DLLMC_FP32 for the fp32 build of the same kernels.

Versions. v1..v4 are the production header's kernels (included, never copied; its top comment
says what each changes and why, with the measured numbers); "(engine)" marks the one the
engine's public functions run (layernorm_forward, fused_residual_layernorm_forward,
layernorm_backward), which are also checked on every shape, fallbacks included. The default run
prints the engine and the older versions; --v4 adds the candidates.
  v1  one warp per row, scalar loads, two passes over global memory; the backward keeps each
      warp's dweight/dbias partial sums in global scratch and re-reads/re-writes them every row.
  v2  one warp per row, 16-byte loads, the row kept in registers (read once); the backward
      accumulates dweight/dbias per lane in registers over a block's 128 rows (236 registers at
      C = 768: one block per SM), reduces the block's warps through shared memory in a fixed order,
      then one small kernel adds the per-block partials in block order.
  v3  forward (the engine's): v2's arithmetic with 1, 2 or 4 rows per warp, all their loads issued
      first, kept packed (48 registers at 1 row: 5 blocks per SM instead of v2's 4; 4 rows: 121);
      launch options below.
      Backward (the engine's for 1024 < C <= 4096 bf16 until 2026-11-24's session 4): a team of C/8 threads per row (one 16-byte packet
      each, 16 accumulators), rows prefetched 1..5 ahead into shared memory with cp.async, a
      one-wave grid sized by the occupancy API; the candidates differ in teams and stages.
  v4  backward (the engine's for C <= 6144 bf16): v3 with fewer instructions per row (5 shuffles
      for a warp's two sums instead of 10, dx as two FMAs) and P packets per thread, so a C = 768
      row is one warp's (3 packets: no team barrier), in blocks of 2 teams, 2 stages; wider rows:
      3 packets per thread in teams of several warps, 3 stages (C = 1600: 93.0% of copy where v3
      took 69.9%, `layernorm 65536 1600 --v4 --no-sweep`). Both with rows interleaved across the grid
      and the partials kernel as a programmatic dependent launch (C = 768: 88.6-91.1% against
      85.5-85.8% without). Candidates (--v4): without one or both of those two, the wide
      partials kernel below instead of v3's, 1 or 4 teams per block, 3 stages, 4 packets per
      thread, and one packet per thread in 5 teams of 96 (v3's shape with v4's arithmetic).
      Dropped after the 2026-11-24 runs (numbers in the header comment): a v4 forward (one-wave
      grid, next row loaded before the current one is computed: 76.5% vs v3's 84.9%), KEEP (g and
      xhat kept in registers between the passes: 77.3%), 8 teams of one warp (76.0%), a kernel
      without the team barrier for one-warp teams (twice the blocks per SM: 80.6-81.3%), dinp
      stored with st.global.cs (no gain).
  v4 with dwpe (layer 0's ln1 backward in the engine, layernorm_backward_v4_dwpe): the encoder's
      dout is the dinp this backward writes, so it also sums dwpe[t] over b, in a grid whose teams
      are a multiple of T with rows interleaved (each team owns one position), plus an ordered
      finish over the partials. N = 65536, C = 768, T = 1024: 109.0-109.5 us against 105.0-105.2
      us for v4 alone and 135.5-135.9 us for v4 followed by the encoder's dwpe pass (2026-11-24,
      session 6).
  Forward launch options of v3 (plain and fused; the engine's are llmc/layernorm.cuh's LN3_FWD_*
  and LN3_FUSED_* defines, which -D can set to time another as the engine's): 1, 2, 4 or 8 warps
  per block (a block's slot frees only when its slowest row is done: smaller blocks free theirs
  sooner) and "cs stores" (out stored with st.global.cs, evict first). The engine's since the
  later 2026-11-24 runs: plain 4 warps with cs stores (86.8%; 8 warps without, the engine
  before, 84.5% in the same run), fused 2 warps (91.7%). Dropped after those runs (numbers in
  llmc/layernorm.cuh): a register cap for more warps per SM (40 registers: plain 79-85%, fused
  63-68%; 32 registers: 61-62%, 44%) and a v5 forward (a one-wave grid of warps streaming their
  rows through cp.async shared-memory stages: 70.6-79.0% in 12 configurations, fused 77.7-85.9%).

Checks: every version against a double-precision CPU reference computed from the same rounded
inputs, on fresh random inputs per shape; outputs (out, residual, mean, rstd, the backward's
scratch) poisoned with NaN first; the backward (which adds into dinp, dweight, dbias) is run twice
from the same state and must give the same bits. Tolerance: 1e-2 of the largest reference value
in bf16 (one bf16 rounding of the output is 2^-9 relative), 1e-4 in fp32.
Timing: bench::time_ms (3 warm-up runs, median of 30, CUDA events), GB/s counts the bytes the
kernel must move: forward 2NC values, fused 4NC, backward 4NC (read dout, x, dinp, write dinp),
each plus the fp32 statistics; % of the device-to-device copy bandwidth measured in the same run.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "llmc/encoder.cuh"  // the encoder's dwpe pass, what the dwpe form of the backward replaces
#include "llmc/layernorm.cuh"
#include "common.cuh"

#ifdef LLMC_FP32
static const double TOL = 1e-4;  // fp32 storage: summation-order differences only
#else
static const double TOL = 1e-2;  // bf16 storage: one rounding of the output (2^-9 relative) and a bit
#endif

// ==============================================================================================
// a candidate that stays here: a wider partials kernel for the v4 backward

// dweight[c] += sum_b partial[b][c], dbias[c] += sum_b partial[b][C + c], b in index order. A block
// of 1024 threads takes 8 columns: thread (x, y) = (tid % 8, tid / 8) sums b = y, y + 128, ... of
// column blockIdx.x * 8 + x (8 columns of 4 bytes: one 32-byte sector per row), then a fixed tree
// over y in shared memory. Grid: ceil(2C / 8) blocks, so the few-MB read is spread over the SMs
// rather than latency bound in a few of them.
#define LN4_FIN_COLS 8
#define LN4_FIN_LANES 128
__global__ void __launch_bounds__(LN4_FIN_COLS* LN4_FIN_LANES) layernorm_backward_finish_wide_kernel(
    floatX* dweight, floatX* dbias, const float* scratch, int parts, int C) {
    __shared__ float tile[LN4_FIN_LANES][LN4_FIN_COLS];
    const int x = threadIdx.x % LN4_FIN_COLS, y = threadIdx.x / LN4_FIN_COLS;
    const int j = blockIdx.x * LN4_FIN_COLS + x;
    float acc = 0.0f;
    if (j < 2 * C) {
        for (int k = y; k < parts; k += LN4_FIN_LANES) acc += scratch[(size_t)k * 2 * C + j];
    }
    tile[y][x] = acc;
    __syncthreads();
    for (int half = LN4_FIN_LANES / 2; half > 0; half /= 2) {
        if (y < half) tile[y][x] += tile[y + half][x];
        __syncthreads();
    }
    if (y == 0 && j < 2 * C) {
        floatX* out = j < C ? dweight + j : dbias + (j - C);
        *out = from_float<floatX>(to_float(*out) + tile[0][x]);
    }
}


// the v4 backward with the wide partials kernel above instead of v3's
static void layernorm_backward_v4_wide(floatX* dinp, floatX* dweight, floatX* dbias, float* scratch,
                                       const floatX* dout, const floatX* inp, const floatX* weight, const float* mean,
                                       const float* rstd, int N, int C, cudaStream_t stream, const Ln4Config& k) {
    const int grid = layernorm_backward_v4_partials(dinp, scratch, dout, inp, weight, mean, rstd, N, C, stream, k);
    layernorm_backward_finish_wide_kernel<<<ceil_div(2 * C, LN4_FIN_COLS), LN4_FIN_COLS * LN4_FIN_LANES, 0, stream>>>(
        dweight, dbias, scratch, grid, C);
    cudaCheckLast();
}

// ==============================================================================================
// versions

// forward: v1, v2, v3 with `rows` per warp and the launch options `warps` per block and `stream`
// (st.global.cs stores of out)
struct FwdVersion {
    int version, rows, warps;
    bool stream;
};
static const FwdVersion FWD_VERSIONS[] = {
    {1, 0, 0, false}, {2, 0, 0, false}, {3, 1, 8, false}, {3, 2, 8, false}, {3, 4, 8, false}, {3, 1, 4, false},
    {3, 1, 2, false}, {3, 1, 1, false}, {3, 1, 8, true},  {3, 1, 4, true},  {3, 1, 2, true}};

static bool forward_applies(const FwdVersion& v, int C) {
    if (v.version == 1) return true;
    return layernorm_v2_supported(C);
}
static bool forward_is_engine(const FwdVersion& v, bool fused) {
    if (v.version != 3) return false;
    if (fused) return v.rows == LN3_FUSED_ROWS && v.warps == LN3_FUSED_WARPS && v.stream == LN3_FUSED_STREAM;
    return v.rows == LN3_FWD_ROWS && v.warps == LN3_FWD_WARPS && v.stream == LN3_FWD_STREAM;
}
static std::string forward_name(const FwdVersion& v, bool fused) {
    std::string name = "v" + std::to_string(v.version);
    if (v.version == 3) {
        std::string options;
        if (v.rows != 1) options += std::to_string(v.rows) + " rows per warp";
        if (v.warps != 8) {
            options += (options.empty() ? "" : ", ") + std::to_string(v.warps) + (v.warps == 1 ? " warp" : " warps");
            options += " per block";
        }
        if (v.stream) options += options.empty() ? "cs stores" : ", cs stores";
        if (!options.empty()) name += " (" + options + ")";
    }
    if (forward_is_engine(v, fused)) name += " (engine)";
    return name;
}

template <bool FUSED>
static void run_forward(const FwdVersion& v, floatX* residual, floatX* out, float* mean, float* rstd, const floatX* a,
                        const floatX* b, const floatX* w, const floatX* bias, int N, int C) {
    if (v.version == 1) {
        if (FUSED) fused_residual_layernorm_forward_v1(residual, out, mean, rstd, a, b, w, bias, N, C, 0);
        else layernorm_forward_v1(out, mean, rstd, a, w, bias, N, C, 0);
    } else if (v.version == 2) {
        layernorm_forward_v2<FUSED>(residual, out, mean, rstd, a, b, w, bias, N, C, 0);
    } else if (v.rows == 1 && v.stream) {  // v3: the instances the table above names
        layernorm_forward_v3<FUSED, 1, true>(residual, out, mean, rstd, a, b, w, bias, N, C, 0, v.warps);
    } else if (v.rows == 1) {
        layernorm_forward_v3<FUSED, 1, false>(residual, out, mean, rstd, a, b, w, bias, N, C, 0, v.warps);
    } else if (v.rows == 2 && !v.stream) {
        layernorm_forward_v3<FUSED, 2, false>(residual, out, mean, rstd, a, b, w, bias, N, C, 0, v.warps);
    } else if (v.rows == 4 && !v.stream) {
        layernorm_forward_v3<FUSED, 4, false>(residual, out, mean, rstd, a, b, w, bias, N, C, 0, v.warps);
    } else {
        fprintf(stderr, "run_forward: no v3 instance for %d rows per warp, cs stores %d\n", v.rows, (int)v.stream);
        exit(1);
    }
}

// backward: v1, v2; v3 with at most `threads` threads per block (whole teams) and `stages`; v4 with
// `teams` per block, `stages`, `packets` per thread (packets 0: the engine's configuration for C)
// `wide` (the wide partials kernel), `interleave` (rows dealt out across the grid) and `pdl` (the
// partials kernel as a programmatic dependent launch). candidate: run only with --v4.
struct BwdVersion {
    int version, threads, teams, stages, packets;
    bool wide, candidate, interleave, pdl;
};
static const BwdVersion BWD_VERSIONS[] = {
    {1, 0, 0, 0, 0, false, false, false, false},
    {2, 0, 0, 0, 0, false, false, false, false},
    {3, LN3_BWD_THREADS, 0, LN3_BWD_STAGES, 0, false, false, false, false},  // v3 as the engine ran it
    {4, 0, 0, 0, 0, false, false, false, false},                             // v4 as the engine runs it
    {3, 96, 0, 4, 0, false, true, false, false},
    {3, 384, 0, 2, 0, false, true, false, false},
    {3, 384, 0, 6, 0, false, true, false, false},
    {4, 0, 2, 2, 3, true, true, false, false},  // the first v4 run's best: the engine's, with the wide partials kernel
    {4, 0, 1, 2, 3, false, true, false, false},
    {4, 0, 2, 3, 3, false, true, false, false},
    {4, 0, 2, 2, 4, false, true, false, false},  // one warp with 4 packets per thread (C = 1024 bf16)
    {4, 0, 4, 2, 3, false, true, false, false},
    {4, 0, 5, 4, 1, false, true, false, false},
    {4, 0, 2, 2, 3, false, true, false, false},  // the engine's before 2026-11-24's session 4
    {4, 0, 2, 2, 3, false, true, true, false},   // interleaved rows alone
    {4, 0, 2, 2, 3, false, true, false, true},   // the dependent launch alone
    {4, 0, 4, 2, 3, false, true, true, true},
    {4, 0, 2, 3, 3, false, true, true, true}};

// the v4 launch configuration of a v4 entry (only for version 4; packets 0: the engine's)
static Ln4Config backward_config_v4(const BwdVersion& v, int C) {
    if (v.packets == 0) return ln4_engine_config(C);
    const Ln4Config k = {v.teams, v.stages, v.packets, v.interleave, v.pdl};
    return k;
}
static bool backward_applies(const BwdVersion& v, int C, bool candidates) {
    if (v.candidate && !candidates) return false;
    if (v.version == 1) return true;
    if (v.version == 2) return layernorm_v2_supported(C);
    if (v.version == 3) return layernorm_v3_backward_supported(C);
    if (v.packets == 0 && !layernorm_v4_backward_supported(C)) return false;
    return ln4_config_ok(C, backward_config_v4(v, C));
}
// (version, teams, stages, packets, wide, interleave, pdl): two entries with the same key run the
// same kernels
static std::vector<int> backward_key(const BwdVersion& v, int C) {
    if (v.version == 3) return {3, ln3_teams(C, v.threads), v.stages, 1, 0, 0, 0};
    if (v.version == 4) {
        const Ln4Config k = backward_config_v4(v, C);
        return {4, k.teams, k.stages, k.packets, v.wide ? 1 : 0, k.interleave ? 1 : 0, k.pdl ? 1 : 0};
    }
    return {v.version};
}
static bool backward_is_engine(const BwdVersion& v, int C) {
    if (v.version == 3) {  // the engine's fallback where v4 does not apply
        return !layernorm_v4_backward_supported(C) && v.stages == LN3_BWD_STAGES &&
               ln3_teams(C, v.threads) == ln3_teams(C, LN3_BWD_THREADS);
    }
    if (v.version != 4 || !layernorm_v4_backward_supported(C)) return false;
    const Ln4Config k = ln4_engine_config(C);
    const std::vector<int> engine = {4, k.teams, k.stages, k.packets, 0, k.interleave ? 1 : 0, k.pdl ? 1 : 0};
    return backward_key(v, C) == engine;
}
static std::string backward_name(const BwdVersion& v, int C) {
    if (v.version < 3) return "v" + std::to_string(v.version);
    if (backward_is_engine(v, C)) return v.version == 3 ? "v3 (engine)" : "v4 (engine)";
    const std::vector<int> key = backward_key(v, C);
    const int teams = key[1];
    const int team_threads = v.version == 3 ? ln3_team_threads(C) : ln4_team_threads(C, key[3]);
    std::string name = "v" + std::to_string(v.version) + " (" + std::to_string(teams) +
                       (teams == 1 ? " team" : " teams") + " x " + std::to_string(team_threads) + " thr, ";
    if (v.version == 4) name += std::to_string(key[3]) + " pkt, ";
    name += std::to_string(v.stages) + " stages";
    if (v.wide) name += ", wide partials kernel";
    if (key[5]) name += ", interleaved rows";
    if (key[6]) name += ", dependent launch";
    return name + ")";
}
static size_t backward_scratch_floats(const BwdVersion& v, int N, int C) {
    if (v.version == 1) return layernorm_backward_v1_scratch_floats(N, C);
    if (v.version == 2) return layernorm_backward_v2_scratch_floats(N, C);
    if (v.version == 3) return layernorm_backward_v3_scratch_floats(N, C, ln3_teams(C, v.threads), v.stages);
    return layernorm_backward_v4_scratch_floats(N, C, backward_config_v4(v, C));
}
static void run_backward(const BwdVersion& v, floatX* dinp, floatX* dw, floatX* db, float* scratch, const floatX* dout,
                         const floatX* x, const floatX* w, const float* mean, const float* rstd, int N, int C) {
    if (v.version == 1) {
        layernorm_backward_v1(dinp, dw, db, scratch, dout, x, w, mean, rstd, N, C, 0);
    } else if (v.version == 2) {
        layernorm_backward_v2(dinp, dw, db, scratch, dout, x, w, mean, rstd, N, C, 0);
    } else if (v.version == 3) {
        const int teams = ln3_teams(C, v.threads);
        layernorm_backward_v3(dinp, dw, db, scratch, dout, x, w, mean, rstd, N, C, 0, teams, v.stages);
    } else if (v.wide) {
        layernorm_backward_v4_wide(dinp, dw, db, scratch, dout, x, w, mean, rstd, N, C, 0, backward_config_v4(v, C));
    } else {
        layernorm_backward_v4(dinp, dw, db, scratch, dout, x, w, mean, rstd, N, C, 0, backward_config_v4(v, C));
    }
}
// launch configuration of a v3/v4 entry, for the log
static void print_backward_config(const BwdVersion& v, const std::string& name, int N, int C) {
    int grid = 0, threads = 0;
    size_t smem = 0;
    if (v.version == 3) {
        const int teams = ln3_teams(C, v.threads);
        grid = layernorm_backward_v3_grid(N, C, teams, v.stages);
        threads = teams * ln3_team_threads(C);
        smem = ln3_smem_bytes(teams, ln3_team_threads(C), v.stages);
    } else if (v.version == 4) {
        const Ln4Config k = backward_config_v4(v, C);
        grid = layernorm_backward_v4_grid(N, C, k);
        threads = k.teams * ln4_team_threads(C, k.packets);
        smem = ln4_smem_bytes(k.teams, ln4_team_threads(C, k.packets), k.stages, k.packets);
    } else {
        return;
    }
    printf("info: %s: grid %d blocks of %d threads, %.1f KB shared memory each\n", name.c_str(), grid, threads,
           smem / 1024.0);
}

// ---- CPU references (double) ------------------------------------------------------------------

static void cpu_forward(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& bias,
                        int N, int C, std::vector<double>& out, std::vector<double>& mean, std::vector<double>& rstd) {
    out.assign((size_t)N * C, 0.0);
    mean.assign(N, 0.0);
    rstd.assign(N, 0.0);
    for (int n = 0; n < N; n++) {
        const double* xr = &x[(size_t)n * C];
        double mu = 0.0, var = 0.0;
        for (int c = 0; c < C; c++) mu += xr[c];
        mu /= C;
        for (int c = 0; c < C; c++) var += (xr[c] - mu) * (xr[c] - mu);
        const double r = 1.0 / sqrt(var / C + 1e-5);
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = (xr[c] - mu) * r * w[c] + bias[c];
        mean[n] = mu;
        rstd[n] = r;
    }
}

// dinp = dinp0 + dx, dw = dw0 + sum_n dout * xhat, db = db0 + sum_n dout (exact statistics of x)
static void cpu_backward(const std::vector<double>& x, const std::vector<double>& dout, const std::vector<double>& w,
                         const std::vector<double>& mean, const std::vector<double>& rstd, int N, int C,
                         std::vector<double>& dinp, std::vector<double>& dw, std::vector<double>& db) {
    for (int n = 0; n < N; n++) {
        const size_t base = (size_t)n * C;
        double g_mean = 0.0, gx_mean = 0.0;
        for (int c = 0; c < C; c++) {
            const double xhat = (x[base + c] - mean[n]) * rstd[n];
            const double g = dout[base + c] * w[c];
            g_mean += g;
            gx_mean += g * xhat;
        }
        g_mean /= C;
        gx_mean /= C;
        for (int c = 0; c < C; c++) {
            const double d = dout[base + c];
            const double xhat = (x[base + c] - mean[n]) * rstd[n];
            dinp[base + c] += rstd[n] * (d * w[c] - g_mean - xhat * gx_mean);
            dw[c] += d * xhat;
            db[c] += d;
        }
    }
}

// ---- one shape: check every version that applies; with copy_gbs > 0 also time it ---------------

static void run_shape(int N, int C, double copy_gbs, uint32_t seed, bool candidates) {
    const size_t NC = (size_t)N * C;
    const bool timed = copy_gbs > 0.0;
    char shape[64];
    snprintf(shape, sizeof(shape), "(N=%d C=%d)", N, C);
    printf("---- shape N=%d C=%d%s\n", N, C, timed ? "" : " (checks only)");

    Rng rng;
    rng_init(&rng, seed);
    const std::vector<floatX> ha = bench::random_normal<floatX>(&rng, NC, 0.1f, 1.0f);
    const std::vector<floatX> hb = bench::random_normal<floatX>(&rng, NC, 0.0f, 0.5f);
    const std::vector<floatX> hw = bench::random_normal<floatX>(&rng, C, 1.0f, 0.2f);
    const std::vector<floatX> hbias = bench::random_normal<floatX>(&rng, C, 0.0f, 0.2f);
    const std::vector<floatX> hdout = bench::random_normal<floatX>(&rng, NC, 0.0f, 1.0f);
    const std::vector<floatX> hdinp0 = bench::random_normal<floatX>(&rng, NC, 0.0f, 0.5f);
    const std::vector<floatX> hdw0 = bench::random_normal<floatX>(&rng, C, 0.0f, 1.0f);
    const std::vector<floatX> hdb0 = bench::random_normal<floatX>(&rng, C, 0.0f, 1.0f);

    // references: plain forward of a; fused: residual = round(a + b), forward of it; backward of the
    // plain forward of a, with its exact statistics
    const std::vector<double> xa = bench::to_double(ha), xb = bench::to_double(hb), w = bench::to_double(hw);
    const std::vector<double> bias = bench::to_double(hbias), dout = bench::to_double(hdout);
    std::vector<double> ref_res(NC);
    for (size_t i = 0; i < NC; i++) ref_res[i] = to_float(from_float<floatX>((float)(xa[i] + xb[i])));
    std::vector<double> ref_out_a, ref_mean_a, ref_rstd_a, ref_out_f, ref_mean_f, ref_rstd_f;
    cpu_forward(xa, w, bias, N, C, ref_out_a, ref_mean_a, ref_rstd_a);
    cpu_forward(ref_res, w, bias, N, C, ref_out_f, ref_mean_f, ref_rstd_f);
    std::vector<double> ref_dinp = bench::to_double(hdinp0), ref_dw = bench::to_double(hdw0);
    std::vector<double> ref_db = bench::to_double(hdb0);
    cpu_backward(xa, dout, w, ref_mean_a, ref_rstd_a, N, C, ref_dinp, ref_dw, ref_db);

    floatX *a = bench::to_device(ha), *b = bench::to_device(hb), *weight = bench::to_device(hw);
    floatX *bias_d = bench::to_device(hbias), *ddout = bench::to_device(hdout), *dinp = bench::to_device(hdinp0);
    floatX *gw = bench::to_device(hdw0), *gb = bench::to_device(hdb0);
    floatX* out = bench::device_alloc<floatX>(NC);
    floatX* residual = bench::device_alloc<floatX>(NC);
    float* mean = bench::device_alloc<float>(N);
    float* rstd = bench::device_alloc<float>(N);
    size_t scratch_floats = layernorm_backward_scratch_floats(N, C);
    for (const BwdVersion& v : BWD_VERSIONS) {
        if (backward_applies(v, C, candidates)) {
            scratch_floats = std::max(scratch_floats, backward_scratch_floats(v, N, C));
        }
    }
    float* scratch = bench::device_alloc<float>(scratch_floats);

    const double fwd_bytes = 2.0 * NC * sizeof(floatX) + 8.0 * N;
    const double fused_bytes = 4.0 * NC * sizeof(floatX) + 8.0 * N;
    const double bwd_bytes = 4.0 * NC * sizeof(floatX) + 8.0 * N;

    // ---- forward and fused forward ----
    auto poison_forward = [&] {
        bench::poison(out, NC);
        bench::poison(residual, NC);
        bench::poison(mean, N);
        bench::poison(rstd, N);
    };
    auto forward_error = [&](bool fused) {
        double err = bench::rel_error(bench::to_host(out, NC), fused ? ref_out_f : ref_out_a);
        err = std::max(err, bench::rel_error(bench::to_host(mean, N), fused ? ref_mean_f : ref_mean_a));
        err = std::max(err, bench::rel_error(bench::to_host(rstd, N), fused ? ref_rstd_f : ref_rstd_a));
        if (fused) err = std::max(err, bench::rel_error(bench::to_host(residual, NC), ref_res));
        return err;
    };
    for (int f = 0; f < 2; f++) {
        const bool fused = f == 1;
        const std::string kernel =
            std::string(fused ? "layernorm fused residual + forward " : "layernorm forward ") + shape;
        for (const FwdVersion& v : FWD_VERSIONS) {
            if (!forward_applies(v, C)) continue;
            auto fwd = [&] {
                if (fused) run_forward<true>(v, residual, out, mean, rstd, a, b, weight, bias_d, N, C);
                else run_forward<false>(v, NULL, out, mean, rstd, a, NULL, weight, bias_d, N, C);
            };
            poison_forward();
            fwd();
            cudaCheck(cudaDeviceSynchronize());
            const double err = forward_error(fused);
            const std::string name = forward_name(v, fused);
            if (timed) {
                bench::report_memory(kernel, name, err, TOL, bench::time_ms(fwd), fused ? fused_bytes : fwd_bytes,
                                     copy_gbs);
            } else {
                bench::check((kernel + " " + name).c_str(), err, TOL);
            }
        }
        // the engine's entry point (its version, or the fallback for this C)
        poison_forward();
        if (fused) fused_residual_layernorm_forward(residual, out, mean, rstd, a, b, weight, bias_d, N, C, 0);
        else layernorm_forward(out, mean, rstd, a, weight, bias_d, N, C, 0);
        cudaCheck(cudaDeviceSynchronize());
        bench::check((kernel + " engine entry").c_str(), forward_error(fused), TOL);
    }

    // ---- backward (statistics from v1's plain forward of a) ----
    const std::string kernel = std::string("layernorm backward ") + shape;
    layernorm_forward_v1(out, mean, rstd, a, weight, bias_d, N, C, 0);
    auto reset_backward = [&] {
        bench::copy_to_device(dinp, hdinp0);
        bench::copy_to_device(gw, hdw0);
        bench::copy_to_device(gb, hdb0);
        bench::poison(scratch, scratch_floats);
    };
    // checks `bwd` (twice from the same state: same bits) and returns its error
    auto check_backward = [&](const std::string& what, auto bwd) {
        std::vector<floatX> got[2][3];
        for (int run = 0; run < 2; run++) {
            reset_backward();
            bwd();
            cudaCheck(cudaDeviceSynchronize());
            got[run][0] = bench::to_host(dinp, NC);
            got[run][1] = bench::to_host(gw, C);
            got[run][2] = bench::to_host(gb, C);
        }
        double err = bench::rel_error(got[0][0], ref_dinp);
        err = std::max(err, bench::rel_error(got[0][1], ref_dw));
        err = std::max(err, bench::rel_error(got[0][2], ref_db));
        for (int i = 0; i < 3; i++) {
            if (!bench::same_bits(got[0][i], got[1][i])) {
                printf("%s: two runs from the same state differ (%s)\n", what.c_str(),
                       i == 0 ? "dinp" : (i == 1 ? "dweight" : "dbias"));
                err = INFINITY;
            }
        }
        return err;
    };
    std::vector<std::vector<int>> seen;  // configurations already run (one entry per kernel)
    for (const BwdVersion& v : BWD_VERSIONS) {
        if (!backward_applies(v, C, candidates)) continue;
        const std::vector<int> key = backward_key(v, C);
        if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
        seen.push_back(key);
        auto bwd = [&] { run_backward(v, dinp, gw, gb, scratch, ddout, a, weight, mean, rstd, N, C); };
        const std::string name = backward_name(v, C);
        const double err = check_backward(kernel + " " + name, bwd);
        if (!timed) {
            bench::check((kernel + " " + name).c_str(), err, TOL);
            continue;
        }
        print_backward_config(v, name, N, C);
        bench::report_memory(kernel, name, err, TOL, bench::time_ms(bwd), bwd_bytes, copy_gbs);
    }
    const double err = check_backward(kernel + " engine entry", [&] {
        layernorm_backward(dinp, gw, gb, scratch, ddout, a, weight, mean, rstd, N, C, 0);
    });
    bench::check((kernel + " engine entry").c_str(), err, TOL);
    // layer 0's ln1 backward with the encoder's dwpe (layernorm_backward_v4_dwpe), for N = B T rows
    // with T the largest divisor of N up to 1024: dinp, dweight, dbias against the references
    // above, dwpe against dwpe0 + the column sums over b of the dinp it wrote (so the check is of
    // the sum alone), twice from the same state; timed against the engine's backward followed by
    // the encoder's dwpe pass (which reads dinp again), both on the same count of bytes
    if (layernorm_v4_backward_supported(C)) {
        int T = 1;
        for (int d = 1; d <= 1024 && d <= N; d++)
            if (N % d == 0) T = d;
        const Ln4Config k = ln4_engine_config(C);
        const int parts = layernorm_backward_v4_dwpe_parts(N, C, T, k);
        const std::string name = "v4 (engine) with dwpe (T=" + std::to_string(T) + ", " + std::to_string(parts) +
                                 (parts == 1 ? " partial" : " partials") + " per position)";
        if (parts == 0) {
            printf("%s with dwpe, T=%d: the fused form does not apply\n", kernel.c_str(), T);
        } else {
            const std::vector<floatX> hpe0 = bench::random_normal<floatX>(&rng, (size_t)T * C, 0.0f, 1.0f);
            floatX* dwpe = bench::to_device(hpe0);
            const size_t pe_floats = layernorm_backward_v4_dwpe_scratch_floats(N, C, T, k);
            float* pe_scratch = bench::device_alloc<float>(pe_floats);
            auto fused = [&] {
                layernorm_backward_v4_dwpe(dinp, gw, gb, dwpe, pe_scratch, ddout, a, weight, mean, rstd, N, C, T, 0,
                                           k);
            };
            std::vector<floatX> got_dinp[2], got_pe[2];
            double err = 0.0;
            for (int run = 0; run < 2; run++) {
                reset_backward();
                bench::copy_to_device(dwpe, hpe0);
                bench::poison(pe_scratch, pe_floats);
                fused();
                cudaCheck(cudaDeviceSynchronize());
                got_dinp[run] = bench::to_host(dinp, NC);
                got_pe[run] = bench::to_host(dwpe, (size_t)T * C);
                if (run == 0) {
                    err = bench::rel_error(got_dinp[0], ref_dinp);
                    err = std::max(err, bench::rel_error(bench::to_host(gw, C), ref_dw));
                    err = std::max(err, bench::rel_error(bench::to_host(gb, C), ref_db));
                    std::vector<double> ref_pe = bench::to_double(hpe0);
                    for (int n = 0; n < N; n++)
                        for (int c = 0; c < C; c++)
                            ref_pe[(size_t)(n % T) * C + c] += (double)to_float(got_dinp[0][(size_t)n * C + c]);
                    err = std::max(err, bench::rel_error(got_pe[0], ref_pe));
                }
            }
            if (!bench::same_bits(got_dinp[0], got_dinp[1]) || !bench::same_bits(got_pe[0], got_pe[1])) {
                printf("%s %s: two runs from the same state differ\n", kernel.c_str(), name.c_str());
                err = INFINITY;
            }
            if (timed) {
                const double pe_bytes = bwd_bytes + 2.0 * T * C * sizeof(floatX);
                bench::report_memory(kernel + " with dwpe", name, err, TOL, bench::time_ms(fused), pe_bytes, copy_gbs);
                const double ms = bench::time_ms([&] {
                    layernorm_backward(dinp, gw, gb, scratch, ddout, a, weight, mean, rstd, N, C, 0);
                    encoder_backward_wpe(dwpe, dinp, N / T, T, C, 0);
                });
                bench::report_memory(kernel + " with dwpe", "v4 (engine), then the encoder's dwpe pass", -1.0, TOL, ms,
                                     pe_bytes, copy_gbs);
            } else {
                bench::check((kernel + " " + name).c_str(), err, TOL);
            }
            cudaCheck(cudaFree(dwpe));
            cudaCheck(cudaFree(pe_scratch));
        }
    }
    if (timed && layernorm_v3_backward_supported(C)) {
        // how the engine's backward splits between its main kernel and its partials kernel, and
        // what the wide partials kernel would take on the same partials
        int grid = 0;
        double main_ms = 0.0;
        if (layernorm_v4_backward_supported(C)) {
            const Ln4Config k = ln4_engine_config(C);
            grid = layernorm_backward_v4_grid(N, C, k);
            main_ms = bench::time_ms([&] {
                layernorm_backward_v4_partials(dinp, scratch, ddout, a, weight, mean, rstd, N, C, 0, k);
            });
        } else {
            grid = layernorm_backward_v3_grid(N, C, ln3_teams(C, LN3_BWD_THREADS), LN3_BWD_STAGES);
        }
        const double ms = bench::time_ms([&] {
            layernorm_backward_finish_kernel<32><<<ceil_div(2 * C, 32), dim3(32, 32)>>>(gw, gb, scratch, grid, C);
            cudaCheckLast();
        });
        const double wide_ms = bench::time_ms([&] {
            layernorm_backward_finish_wide_kernel<<<ceil_div(2 * C, LN4_FIN_COLS), LN4_FIN_COLS * LN4_FIN_LANES>>>(
                gw, gb, scratch, grid, C);
            cudaCheckLast();
        });
        if (main_ms > 0.0) printf("info: engine backward: its main kernel alone takes %.1f us\n", main_ms * 1e3);
        printf("info: engine backward: its partials kernel alone (%d partials of %d floats) takes %.1f us; the wide "
               "partials kernel on them %.1f us\n",
               grid, 2 * C, ms * 1e3, wide_ms * 1e3);
    }

    for (floatX* p : {a, b, weight, bias_d, ddout, dinp, gw, gb, out, residual}) cudaCheck(cudaFree(p));
    for (float* p : {mean, rstd, scratch}) cudaCheck(cudaFree(p));
}

int main(int argc, char** argv) {
    int N = 65536, C = 768;
    bool sweep = true, candidates = false;
    std::vector<const char*> numbers;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-sweep") == 0) sweep = false;
        else if (strcmp(argv[i], "--v4") == 0) candidates = true;
        else numbers.push_back(argv[i]);
    }
    if (numbers.size() == 2) {
        char *end_n = NULL, *end_c = NULL;
        const long n = strtol(numbers[0], &end_n, 10), c = strtol(numbers[1], &end_c, 10);
        if (*end_n != '\0' || *end_c != '\0' || n <= 0 || c <= 0 || n > (1L << 26) || c > (1L << 16)) {
            fprintf(stderr, "error: N must be an integer in [1, 2^26] and C in [1, 65536], got N=%s C=%s\n", numbers[0],
                    numbers[1]);
            return 1;
        }
        N = (int)n;
        C = (int)c;
    } else if (!numbers.empty()) {
        fprintf(stderr, "usage: %s [N C] [--no-sweep] [--v4]\n", argv[0]);
        return 1;
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("layernorm: N=%d C=%d, %s storage, %s%s\n", N, C, LLMC_PRECISION_NAME, prop.name,
           candidates ? ", with the v4 candidates" : "");

    uint32_t seed = 1;
    if (sweep) {
        // odd N everywhere; GPT-2 widths; v3's largest team (4096 bf16); v4's configurations (384,
        // 512: 2 packets per thread in bf16, 3 and the wider rows' one in fp32); partial packet
        // groups (776, 8); C = 99: no 16-byte packets, v1 only (the engine's fallback); B T rows
        // with B > 1 for the backward with dwpe (4 x 1024, 2 x 768, 8 x 256)
        const int shapes[][2] = {{1003, 768}, {517, 1024}, {301, 1280}, {257, 1600}, {129, 2048},
                                 {33, 4096},  {45, 384},   {23, 512},   {77, 776},   {65, 8},
                                 {1, 768},    {31, 99},    {4096, 768}, {1536, 1600}, {2048, 384}};
        for (const auto& s : shapes) run_shape(s[0], s[1], 0.0, seed++, candidates);
    }
    const double copy_gbs = bench::copy_bandwidth_gbs();
    run_shape(N, C, copy_gbs, seed++, candidates);
    return bench::finish();
}
