// The time loop of rnnlab's manual forward and hand BPTT, compiled: the same equations as the cells'
// forward_t / local_derivatives / backward_t in cells.py, for all three cells, float32 and float64.
//
// Per time step, each way: one matrix product into a preallocated buffer, by the register-blocked
// micro-GEMM written below (the other ways, kept to compare with it: see Path and recurrent._step_path), and
// one fused point-wise pass over the batch rows, vectorised with ATen's at::vec::Vectorized (exp from
// SLEEF, as torch's own kernels; tanh from SLEEF in float64 and a rational approximation in float32).
// The all-steps products (the input projection p_t = U x_t + b, dx, and the weight gradients dW, dU,
// which read dp^T without a transposed copy and add up db = sum_t dp_t on the way) are called from Python
// (recurrent.py) as the ops mm / mm_tn / mm_tn2 below, the same micro-GEMM, cache-blocked, up to
// recurrent.MICRO_MAX_MACS (the largest size measured).
// Beside them, embedding_backward: the gradient of the models' embedding E (recurrent.embedding).
//
// Layout, row vectors as in cells.py (W is (G*H, H), so W s becomes s @ W^T):
//   P    (T, B, G*H)  in: U x_t + b.  after forward: the gate activations.  after backward: dp_t
//   h    (T+1, B, H)  s_0 .. s_T (padded rows keep s_{t-1})
//   LSTM: c (T+1, B, H) c_0 .. c_T;  tc (T, B, H) tanh(c_t)
//   GRU:  ghn (T, B, H) W_n s_{t-1} + b_hn; after backward: dgh_n = dn * r
//   mask (T, B) uint8, or undefined when no sequence is padded.
// Built by rnnlab/engine.py with torch.utils.cpp_extension.load; called as torch.ops.rnnlab_loop.*.
// Left out: CUDA, dtypes other than float32/float64, threads over the batch rows in the point-wise pass
// (a thread hand-off per pass did not pay at B = 64; the micro-GEMM splits products of >= 2^22
// multiply-adds over threads), and packing the operands into GotoBLAS-style micro-panels (tried for mm_tn:
// slower than reading them in place; B gets padded rows and dp^T padded k-blocks instead, see padded_rows).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

namespace {

using at::Tensor;

// MKL's Fortran BLAS, as torch's own libtorch_cpu exports it (LP64: int sizes; every argument by pointer;
// column-major). Looked up at run time in that library (dlsym), so the loop still builds and runs, on
// ATen's mm, where a torch build does not export them; checked once against at::mm before first use.
// Not used: MKL's packed GEMM (sgemm_pack_ / sgemm_compute_, W packed once per sequence), exported too,
// measured no faster than plain sgemm_ at any of these shapes (benchmarks/bench_step_gemm.py); MKL
// runs at about half oneDNN's rate on this AMD CPU either way, so the packed form gains nothing here.
using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                          const int*, const float*, const int*, const float*, float*, const int*);
using dgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                          const int*, const double*, const int*, const double*, double*, const int*);

struct Blas {
  sgemm_fn s = nullptr;
  dgemm_fn d = nullptr;
};

// out (B, N) = beta out + x (B, K) @ w^T, w (N, K), all contiguous rows. In column-major terms:
// out^T (N, B) = w (N, K) x^T (K, B); w's row-major storage is w^T column-major, hence "T".
template <typename T, typename F>
void blas_gemm(F gemm, const Tensor& x, const Tensor& w, Tensor& out, T beta) {
  const int B = x.size(0), K = x.size(1), N = w.size(0);
  const T one(1);
  gemm("T", "N", &N, &B, &K, &one, w.data_ptr<T>(), &K, x.data_ptr<T>(), &K, &beta, out.data_ptr<T>(), &N);
}

template <typename T, typename F>
bool blas_agrees(F gemm, at::ScalarType dtype) {  // a 3 x 5 x 4 product (beta = 1) against at::mm
  if (!gemm) return false;
  auto o = at::TensorOptions().dtype(dtype);
  Tensor x = at::arange(15, o).reshape({3, 5}).sin(), w = at::arange(20, o).reshape({4, 5}).cos();
  Tensor out = at::ones({3, 4}, o), want = at::mm(x, w.t());
  blas_gemm<T>(gemm, x, w, out, T(1));
  return at::allclose(out, want + 1, 1e-5, 1e-5);
}

const Blas& blas() {
  static const Blas found = [] {
    Blas b;
    if (void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD)) {  // already loaded by torch: no new load
      b.s = reinterpret_cast<sgemm_fn>(dlsym(lib, "sgemm_"));
      b.d = reinterpret_cast<dgemm_fn>(dlsym(lib, "dgemm_"));
      dlclose(lib);  // drops the reference NOLOAD took; torch keeps the library loaded
    }
    if (!blas_agrees<float>(b.s, at::kFloat)) b.s = nullptr;
    if (!blas_agrees<double>(b.d, at::kDouble)) b.d = nullptr;
    return b;
  }();
  return found;
}

bool has_blas(at::ScalarType dtype) { return dtype == at::kDouble ? blas().d != nullptr : blas().s != nullptr; }

template <typename T>
using Vec = at::vec::Vectorized<T>;

// -- the micro-GEMM: C (+)= A B, register-blocked, written here --------------------------------------------
// Every product of the compiled engine, unless told otherwise (see Path): each step's B x H x G*H product
// and the all-steps products of the input projection, dx and the weight gradients. MKL takes a generic
// code path on this AMD CPU (about half the core's peak) and oneDNN's call costs ~9 us; this kernel reaches
// 100-140 GMAC/s on one core at every step shape measured (benchmarks/bench_step_gemm.py), with no call cost.
//
// A tile of MR rows x NV vectors of C lives in registers (AVX512: 8 x 2 x 16 floats = 16 of the 32 vector
// registers); for each k it loads NV vectors of B's row k and broadcasts MR values of A's column k:
//     C[i, j..j+NV*L) += A(i, k) * B[k, j..j+NV*L)       for i in the tile's rows, k = 0..K-1
// A(i, k) = a[i * ai + k * ak], so A may be read row-major (x_t, ai = K) or transposed (dp^T: ai = 1, ak =
// its row length), and no transposed copy is ever made. B's rows are contiguous, b + k * ldb.
#ifdef CPU_CAPABILITY_AVX512
constexpr int TILE_ROWS = 8;  // 32 vector registers: 16 accumulators
#else
constexpr int TILE_ROWS = 6;  // 16 vector registers (AVX2): 12 accumulators
#endif

template <typename T, int MR, int NV, bool PARTIAL>
inline void tile(int64_t K, const T* a, int64_t ai, int64_t ak, const T* b, int64_t ldb, T* c, int64_t ldc,
                 const T* bias, int64_t last, bool accumulate) {  // last: the lanes of the last vector inside C
  constexpr int64_t L = Vec<T>::size();
  Vec<T> s[MR][NV];
  for (int v = 0; v < NV; ++v) {  // every row starts from the bias (its columns of this panel), or zero
    const Vec<T> start = bias ? Vec<T>::loadu(bias + v * L, PARTIAL && v == NV - 1 ? last : L) : Vec<T>(T(0));
    for (int r = 0; r < MR; ++r) s[r][v] = start;
  }
  for (int64_t k = 0; k < K; ++k) {
    const T* bk = b + k * ldb;
    Vec<T> w[NV];
    for (int v = 0; v < NV; ++v)
      w[v] = PARTIAL && v == NV - 1 ? Vec<T>::loadu(bk + v * L, last) : Vec<T>::loadu(bk + v * L);
    const T* x = a + k * ak;
    for (int r = 0; r < MR; ++r) {
      const Vec<T> xr(x[r * ai]);  // A(i, k), broadcast
      for (int v = 0; v < NV; ++v) s[r][v] = at::vec::fmadd(xr, w[v], s[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      T* p = c + r * ldc + v * L;
      const int64_t n = PARTIAL && v == NV - 1 ? last : L;
      (accumulate ? s[r][v] + Vec<T>::loadu(p, n) : s[r][v]).store(p, n);
    }
}

template <typename T, int NV, bool PARTIAL>
void panel(int64_t M, int64_t K, const T* a, int64_t ai, int64_t ak, const T* b, int64_t ldb, T* c, int64_t ldc,
           const T* bias, int64_t last, bool acc) {  // all M rows of C against one panel of NV vectors of columns
  constexpr int MR = NV == 2 ? TILE_ROWS : 12;
  int64_t i = 0;
  for (; i + MR <= M; i += MR)
    tile<T, MR, NV, PARTIAL>(K, a + i * ai, ai, ak, b, ldb, c + i * ldc, ldc, bias, last, acc);
  a += i * ai;
  c += i * ldc;
  switch (M - i) {  // the last rows, fewer than MR
#define ROWS(n) case n: tile<T, n, NV, PARTIAL>(K, a, ai, ak, b, ldb, c, ldc, bias, last, acc); break;
    ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6) ROWS(7) ROWS(8) ROWS(9) ROWS(10) ROWS(11)
#undef ROWS
    default: break;
  }
}

constexpr int64_t PARALLEL_MACS = int64_t(1) << 22;  // smaller products stay on one thread (a hand-off costs us)

// C (M, N; rows ldc apart) = A B (+ bias on every row, if given), or C += A B with `acc`; A(i, k) =
// a[i * ai + k * ak]; B's row k = b + k * ldb. Panels of 2 vectors of columns, one vector, then a partial
// one; threads over the panels for large products.
template <typename T>
void micro_gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t ai, int64_t ak, const T* b, int64_t ldb, T* c,
                int64_t ldc, bool acc, const T* bias = nullptr) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t full = N / (2 * L), panels = (N + 2 * L - 1) / (2 * L);
  auto run = [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t j = p * 2 * L, rest = N - j;
      const T* bj = bias ? bias + j : nullptr;
      if (p < full) panel<T, 2, false>(M, K, a, ai, ak, b + j, ldb, c + j, ldc, bj, L, acc);
      else if (rest > L) panel<T, 2, true>(M, K, a, ai, ak, b + j, ldb, c + j, ldc, bj, rest - L, acc);
      else if (rest == L) panel<T, 1, false>(M, K, a, ai, ak, b + j, ldb, c + j, ldc, bj, L, acc);
      else panel<T, 1, true>(M, K, a, ai, ak, b + j, ldb, c + j, ldc, bj, rest, acc);
    }
  };
  if (M * N * K >= PARALLEL_MACS && panels > 1 && at::get_num_threads() > 1) at::parallel_for(0, panels, 1, run);
  else run(0, panels);
}

// One product's B and C: C (M, n; rows ldc apart) = A B (+ bias), B's row k at b + k * ldb.
template <typename T>
struct Part {
  const T* b;
  int64_t ldb;
  T* c;
  int64_t ldc, n;
  const T* bias;
};

// The all-steps products (the input projection x U^T + b and dx = dp U over all T*B rows; the weight
// gradients' sums over those rows, A read transposed), cache-blocked: C in blocks of 256 x 256 (256 KB in
// float32) that stay in the core's L2 while the whole sum runs into them, k in blocks of 256 (A's and B's
// rows for the block: 256 KB each; 768 KB in all, in a 1 MB L2). A and B are then read from memory N/256
// and M/256 times and C once, where an unblocked product streams B once per few rows of A. Threads take
// whole blocks of C (or bands of them, below). (Measured, one thread: the GRU's dU at H = 512 at 131 GMAC/s with k-blocks of 256, 113
// with 128; 128 x 256 blocks of C with k-blocks of 512 no better; dx = dp U for the LSTM at H = 512,
// 2048 x 2048 x 512, 95 GMAC/s in row blocks of A that fit L1 against every panel of B, 131 blocked.)
// It takes one product's B and C, or two sharing A (the weight gradients dW = dp^T s and dU = dp^T x: dp is
// then read once), each a Part.
template <typename T>
void micro_gemm_blocked(int64_t M, int64_t K, const T* a, int64_t ai, int64_t ak, const std::vector<Part<T>>& parts,
                        T* sums = nullptr) {
  constexpr int64_t NC = 256, KC = 256;
  std::vector<std::pair<const Part<T>*, int64_t>> blocks;  // C's blocks of columns, (part, first column), in order
  int64_t N = 0;
  for (const Part<T>& p : parts) {
    for (int64_t j = 0; j < p.n; j += NC) blocks.emplace_back(&p, j);
    N += p.n;
  }
  // Rows of C per block: 256, or 128 for A read transposed with 512 < N <= 1024 (e.g. mm_tn2's dW and dU side by
  // side at H = 512), so that a band of C stays within 512 KB in float32 (against two mm_tn calls, scratch timings:
  // 0.93-0.97x with 128 rows on one thread, 0.81-0.97x on two; 256 rows, 0.96-1.00x on one, 1.06x on two at
  // H = 512). (A single mm_tn of N = 2048 was slower with 128: 44-46 ms against 41-43.)
  const int64_t MC = ai == 1 && N > 512 && N <= 1024 ? 128 : 256;
  const int64_t mb = (M + MC - 1) / MC, nb = int64_t(blocks.size());
  // A read transposed (ai = 1: dp^T, whose rows are G*H values apart, often a multiple of 4 KB) is copied a
  // k-block at a time into rows of MC + 16 values, as padded_rows pads B: read in place, the block's rows fall into
  // a few cache sets (measured, one thread: the GRU's training step at H = 512 4% faster; the LSTM's dW at 512,
  // 18.0 ms against oneDNN's 19.6 with its conversions, benchmarks/results/bench_all_steps.txt; unpacked it
  // was the slower of the two, 20.1 against 18.8, in an earlier run of that benchmark).
  // The copy costs 1/NC of the block's multiply-adds; below 2^24 of them it is still felt (LSTM at H = 32: 3%).
  const bool pack = ai == 1 && M * N * K >= (int64_t(1) << 24);
  // A job is a block of C (i, j), or, when A is copied, a band of C's rows i across all its columns, so that
  // each k-block of A is copied once and used against every block of columns (measured, one thread, against
  // the same product on a row-major A: 1.03-1.10x slower copied for each block, 1.00-1.04x for each band, at
  // the weight-gradient shapes of H = 512 and the LM; scratch timings). Bands only while there are as many
  // as threads: with fewer, blocks keep every thread busy.
  const bool bands = pack && mb >= at::get_num_threads();
  const int64_t jobs = bands ? mb : mb * nb;
  // sums (A read transposed only): sums[i] = sum_k A(i, k), the bias gradient sum_t dp_t, added up while
  // the jobs of C's first block of columns read A (from the copy, just written, when A is copied)
  TORCH_INTERNAL_ASSERT(!sums || ai == 1);
  if (sums) std::fill_n(sums, M, T(0));
  if (sums && nb == 0)  // no block of C to ride along (N = 0)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = 0; i < M; ++i) sums[i] += a[k * ak + i];
  auto run = [&](int64_t q0, int64_t q1) {
    std::unique_ptr<T[]> ablock(pack ? new T[KC * (MC + 16)] : nullptr);  // uninitialised: written before read
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t i = (bands ? q : q / nb) * MC, m = std::min(MC, M - i);
      const int64_t b0 = bands ? 0 : q % nb, b1 = bands ? nb : b0 + 1;  // the job's blocks of columns [b0, b1)
      // C(i.., j..) (+)= A(i.., k..) B(k.., j..) over block u of columns; the first k-block starts from the bias
      auto product = [&](int64_t u, int64_t k, int64_t kc, const T* ak_block, int64_t ak_) {
        const Part<T>& p = *blocks[u].first;
        const int64_t j = blocks[u].second;
        micro_gemm<T>(m, std::min(NC, p.n - j), kc, ak_block, ai, ak_, p.b + k * p.ldb + j, p.ldb,
                      p.c + i * p.ldc + j, p.ldc, k > 0, k > 0 || !p.bias ? nullptr : p.bias + j);
      };
      for (int64_t u = b0; K == 0 && u < b1; ++u) product(u, 0, 0, a, ak);  // an empty sum: the bias, or zeros
      for (int64_t k = 0; k < K; k += KC) {
        const int64_t kc = std::min(KC, K - k);
        const T* ak_block = a + i * ai + k * ak;  // A(i.., k..): the block's first value
        int64_t ak_ = ak;
        if (pack) {
          for (int64_t r = 0; r < kc; ++r) std::copy_n(ak_block + r * ak, m, ablock.get() + r * (MC + 16));
          ak_block = ablock.get();
          ak_ = MC + 16;
        }
        if (sums && b0 == 0) {  // k in order, one block of rows per thread: the same sums on any thread count;
          T part[256] = {};     // summed a k-block at a time, as the tiles sum C: float32 error ~(KC + K/KC) ulp
          for (int64_t r = 0; r < kc; ++r) {
            const T* row = ak_block + r * ak_;
            for (int64_t u = 0; u < m; ++u) part[u] += row[u];
          }
          for (int64_t u = 0; u < m; ++u) sums[i + u] += part[u];
        }
        for (int64_t u = b0; u < b1; ++u) product(u, k, kc, ak_block, ak_);
      }
    }
  };
  if (M * N * K >= PARALLEL_MACS && jobs > 1 && at::get_num_threads() > 1) at::parallel_for(0, jobs, 1, run);
  else run(0, jobs);
}

template <typename T>
void micro_gemm_blocked(int64_t M, int64_t N, int64_t K, const T* a, int64_t ai, int64_t ak, const T* b, int64_t ldb,
                        T* c, int64_t ldc, const T* bias = nullptr, T* sums = nullptr) {  // one product
  micro_gemm_blocked<T>(M, K, a, ai, ak, {Part<T>{b, ldb, c, ldc, N, bias}}, sums);
}

// A copy of the matrix m (K, N) whose rows lie ld >= N elements apart, for the micro-GEMM's B: where a row
// is a multiple of 512 bytes long (N = 128, 512, 2048 floats: G*H for power-of-two H) and m is past 32 KB, consecutive
// rows would fall into the same few sets of the L1 cache (64 sets, 4 KB apart) and evict each other while a
// tile reads down a panel; one more vector per row spreads them over every set. (Measured, one thread: the
// LSTM's step product at H = 512, 64 x 512 x 2048, 120 -> 137 GMAC/s; its input projection 109 -> 130.)
Tensor padded_rows(const Tensor& m) {
  const int64_t K = m.size(0), N = m.size(1), size = m.element_size();
  const bool pad = (N * size) % 512 == 0 && K * N * size > (int64_t(1) << 15);  // (within 32 KB: in L1 anyway)
  if (!pad) return m.contiguous();
  Tensor p = at::empty({K, N + 64 / size}, m.options()).narrow(1, 0, N);
#ifdef CPU_CAPABILITY_AVX512
  if (m.scalar_type() == at::kFloat && m.stride(0) == 1) {  // m = s^T, s (N, K) with rows m.stride(1) apart:
    // ATen's 16 x 16 register transposes, s's rows split over the threads (W^T at H = 512: 0.6 ms -> 0.15)
    const float* s = m.data_ptr<float>();
    float* d = p.data_ptr<float>();
    const int64_t ld_s = m.stride(1), ld_d = p.stride(0);
    at::parallel_for(0, N, 256, [&](int64_t j0, int64_t j1) {
      at::vec::transpose_mxn<float>(s + j0 * ld_s, ld_s, d + j0, ld_d, int(j1 - j0), int(K));
    });
    return p;
  }
#endif
  p.copy_(m.contiguous());  // a transposed m straight into p takes ATen's slow strided copy (2.3 ms against 0.6
  return p;                 // for the LSTM's W^T at H = 512)
}

// How a step's product is made, chosen by recurrent.py (_step_path): the micro-GEMM above, or, kept to
// compare with it (benchmarks/bench_step_gemm.py), oneDNN (the weight reordered once; ~9 us per call), ATen's
// mm and MKL's gemm called directly (no dispatcher, y += x w^T in the same call).
enum Path : int64_t { ATEN = 0, BLAS = 1, ONEDNN = 2, MICRO = 3 };

// y = x @ w^T into `out` (B, N), x (B, K) contiguous, w (N, K). oneDNN's op returns a new tensor.
struct Product {
  Tensor w, w_t, wt;  // wt = w^T (K, N), rows contiguous (padded_rows): the micro-GEMM's B, its rows read whole
  int64_t path;
  // weight may be a transposed view (the backward's W^T): the micro-GEMM then reads W itself (uncopied unless
  // its rows get padded)
  Product(const Tensor& weight, int64_t path_) : path(path_) {
    if (path == MICRO) {
      wt = padded_rows(weight.t());
      return;
    }
    w = weight.contiguous();
    w_t = w.t();
    TORCH_CHECK(path != BLAS || has_blas(w.scalar_type()), "rnnlab_loop: MKL's gemm is not available here");
    if (path == ONEDNN) {  // reorder the weight once into oneDNN's blocked layout, instead of at every step's call
      static auto reorder = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
      std::vector<c10::IValue> stack{w, c10::IValue()};
      reorder.callBoxed(&stack);
      w = stack[0].toTensor();
    }
  }
  // out (B, N) (+)= x (B, K) @ w^T by the micro-GEMM, from B contiguous rows of x at `x`
  template <typename T>
  void micro(const T* x, int64_t B, Tensor& out, bool accumulate) const {
    const int64_t K = wt.size(0), N = wt.size(1);
    micro_gemm<T>(B, N, K, x, K, 1, wt.data_ptr<T>(), wt.stride(0), out.data_ptr<T>(), N, accumulate);
  }
  void gemm(const Tensor& x, Tensor& out, bool accumulate) const {  // out (+)= x @ w^T, rows contiguous
    TORCH_INTERNAL_ASSERT(x.is_contiguous() && out.is_contiguous());
    if (path == MICRO) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "micro_gemm",
                                 [&] { micro<scalar_t>(x.data_ptr<scalar_t>(), x.size(0), out, accumulate); });
    } else if (x.scalar_type() == at::kDouble) {
      blas_gemm<double>(blas().d, x, w, out, accumulate ? 1.0 : 0.0);
    } else {
      blas_gemm<float>(blas().s, x, w, out, accumulate ? 1.0f : 0.0f);
    }
  }
  // out = x @ w^T (returns the tensor holding the result: `out`, or oneDNN's new one)
  Tensor mul(const Tensor& x, Tensor& out) const {
    if (path == ONEDNN) {
      static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
      std::vector<c10::IValue> stack{x, w, c10::IValue(), std::string("none"),
                                     c10::List<std::optional<at::Scalar>>(), c10::IValue()};
      op.callBoxed(&stack);
      return stack[0].toTensor();
    }
    if (path == BLAS || path == MICRO) gemm(x, out, false); else at::mm_out(out, x, w_t);
    return out;
  }
  // out (+)= xs[t] @ w^T for a (T', B, K) buffer xs: the micro-GEMM reads step t's rows in place, the
  // libraries get the view xs[t] (making a view costs ~1 us, which at H = 32 is felt at every step)
  template <typename T>
  Tensor step(const Tensor& xs, int64_t t, Tensor& out, bool accumulate) const {
    if (path == MICRO) {
      micro<T>(xs.data_ptr<T>() + t * xs.stride(0), xs.size(1), out, accumulate);
      return out;
    }
    if (!accumulate) return mul(xs[t], out);
    add(xs[t], out);
    return out;
  }
  // out += x @ w^T
  void add(const Tensor& x, Tensor& out) const {
    if (path == ONEDNN) out.add_(mul(x, out));
    else if (path == BLAS || path == MICRO) gemm(x, out, true);
    else out.addmm_(x, w_t);
  }
};

template <typename T>
inline Vec<T> sigmoid(const Vec<T>& x) {  // sigma(x) = 1 / (1 + e^-x)
  return Vec<T>(T(1)) / (Vec<T>(T(1)) + x.neg().exp());
}

// tanh: float64 takes SLEEF's (as torch.tanh). float32 takes a rational approximation, the one Eigen (and
// so TensorFlow and XLA) use for float tanh: tanh(x) ~ x P(x^2) / Q(x^2), P of degree 6 in x^2 and Q of
// degree 3, on x clamped to [-7.905, 7.905] (tanh is 1 to float precision beyond), and x itself where
// |x| < 4e-4. Measured within 4.6 float32 ulp of the exact tanh with fused multiply-adds (AVX2, AVX-512),
// 6.6 without, never past +-1 (tests/test_engine.py;
// SLEEF's is within 1 ulp); SLEEF's took 14% of an LSTM training step at H = 32 (perf), and this one
// made that step 9% faster (1.06 -> 0.96 ms, one thread).
template <typename T>
inline Vec<T> tanh_(const Vec<T>& x) {
  return x.tanh();
}
template <>
inline Vec<float> tanh_(const Vec<float>& a) {
  using V = Vec<float>;
  const V x = at::vec::clamp(a, V(-7.90531110763549805f), V(7.90531110763549805f));
  const V x2 = x * x;
  V p = V(-2.76076847742355e-16f);  // numerator: x (alpha_1 + alpha_3 x^2 + ... + alpha_13 x^12)
  p = at::vec::fmadd(p, x2, V(2.00018790482477e-13f));
  p = at::vec::fmadd(p, x2, V(-8.60467152213735e-11f));
  p = at::vec::fmadd(p, x2, V(5.12229709037114e-08f));
  p = at::vec::fmadd(p, x2, V(1.48572235717979e-05f));
  p = at::vec::fmadd(p, x2, V(6.37261928875436e-04f));
  p = at::vec::fmadd(p, x2, V(4.89352455891786e-03f));
  p = p * x;
  V q = V(1.19825839466702e-06f);  // denominator: beta_0 + beta_2 x^2 + beta_4 x^4 + beta_6 x^6
  q = at::vec::fmadd(q, x2, V(1.18534705686654e-04f));
  q = at::vec::fmadd(q, x2, V(2.26843463243900e-03f));
  q = at::vec::fmadd(q, x2, V(4.89352518554385e-03f));
  return V::blendv(p / q, a, a.abs() < V(0.0004f));  // tanh(x) = x to float precision near 0
}

// Apply f(j, n) over a row of H in vector chunks: n lanes (the last chunk may be partial).
template <typename T, typename F>
inline void over_row(int64_t H, F f) {
  constexpr int64_t L = Vec<T>::size();
  int64_t j = 0;
  for (; j + L <= H; j += L) f(j, L);
  if (j < H) f(j, H - j);
}

template <typename T>
inline Vec<T> ld(const T* p, int64_t n) {
  return n == Vec<T>::size() ? Vec<T>::loadu(p) : Vec<T>::loadu(p, n);
}
template <typename T>
inline void st(const Vec<T>& v, T* p, int64_t n) {
  if (n == Vec<T>::size()) v.store(p); else v.store(p, n);
}

inline const uint8_t* mask_row(const Tensor& mask, int64_t t, int64_t B) {
  return mask.defined() ? mask.data_ptr<uint8_t>() + t * B : nullptr;
}

// -- vanilla RNN ------------------------------------------------------------------------------------------
// a_t = (U x_t + b) + W s_{t-1};  s_t = phi(a_t)
template <typename T>
void rnn_forward_impl(Tensor& P, Tensor& h, const Product& Wp, const Tensor& mask, bool relu) {
  const int64_t T_ = P.size(0), B = P.size(1), H = P.size(2);
  Tensor gh = at::empty({B, H}, P.options());
  for (int64_t t = 0; t < T_; ++t) {
    Tensor g = Wp.step<T>(h, t, gh, false);  // W s_{t-1}
    const T* gp = g.data_ptr<T>();
    const T* pp = P.data_ptr<T>() + t * B * H;
    const T* sp = h.data_ptr<T>() + t * B * H;
    T* sn = h.data_ptr<T>() + (t + 1) * B * H;
    const uint8_t* m = mask_row(mask, t, B);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t o = b * H;
      if (m && !m[b]) {  // padded row keeps s_{t-1}
        std::copy(sp + o, sp + o + H, sn + o);
        continue;
      }
      over_row<T>(H, [&](int64_t j, int64_t n) {
        Vec<T> a = ld(pp + o + j, n) + ld(gp + o + j, n);
        st(relu ? at::vec::maximum(a, Vec<T>(T(0))) : tanh_(a), sn + o + j, n);  // s_t = phi(a_t)
      });
    }
  }
}

// da_t = ds_t phi'(a_t) (tanh' = 1 - s_t^2, relu' = [s_t > 0]);  ds_{t-1} = W^T da_t (+ ds_t on padded rows)
template <typename T>
Tensor rnn_backward_impl(Tensor& dP, const Tensor& h, const Product& WTp, Tensor dh, const Tensor& d_out,
                         const Tensor& mask, bool relu) {
  const int64_t T_ = dP.size(0), B = dP.size(1), H = dP.size(2);
  Tensor dh_prev = at::empty({B, H}, dh.options());
  for (int64_t t = T_ - 1; t >= 0; --t) {
    T* dhp = dh.data_ptr<T>();
    T* dprev = dh_prev.data_ptr<T>();
    const T* sp = h.data_ptr<T>() + (t + 1) * B * H;
    const T* dop = d_out.defined() ? d_out.data_ptr<T>() + t * B * H : nullptr;
    T* da = dP.data_ptr<T>() + t * B * H;
    const uint8_t* m = mask_row(mask, t, B);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t o = b * H;
      if (m && !m[b]) {  // s_t = s_{t-1}: the gradient passes straight through
        std::fill(da + o, da + o + H, T(0));
        std::copy(dhp + o, dhp + o + H, dprev + o);
        continue;
      }
      over_row<T>(H, [&](int64_t j, int64_t n) {
        Vec<T> d = ld(dhp + o + j, n);
        if (dop) d = d + ld(dop + o + j, n);  // s_t also feeds the output at step t
        Vec<T> s = ld(sp + o + j, n);
        Vec<T> f = relu ? (Vec<T>(T(0)) < s) & Vec<T>(T(1)) : Vec<T>(T(1)) - s * s;
        st(d * f, da + o + j, n);  // da_t = ds_t phi'(a_t)
        if (m) st(Vec<T>(T(0)), dprev + o + j, n);
      });
    }
    dh_prev = WTp.step<T>(dP, t, dh_prev, m != nullptr);  // ds_{t-1} = W^T da_t (+ ds_t on padded rows)
    std::swap(dh, dh_prev);
  }
  return dh;
}

// -- LSTM -----------------------------------------------------------------------------------------------
// z = (U x_t + b) + W h_{t-1};  i, f, o = sigma(z_i, z_f, z_o), g = tanh(z_g)
// c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)
template <typename T>
void lstm_forward_impl(Tensor& P, Tensor& h, Tensor& c, Tensor& tc, const Product& Wp, const Tensor& mask) {
  const int64_t T_ = P.size(0), B = P.size(1), G = P.size(2), H = G / 4;
  Tensor gh = at::empty({B, G}, P.options());
  for (int64_t t = 0; t < T_; ++t) {
    Tensor g_ = Wp.step<T>(h, t, gh, false);  // W h_{t-1}, all four blocks
    const T* gp = g_.data_ptr<T>();
    T* pp = P.data_ptr<T>() + t * B * G;
    const T* h0 = h.data_ptr<T>() + t * B * H;
    const T* c0 = c.data_ptr<T>() + t * B * H;
    T* h1 = h.data_ptr<T>() + (t + 1) * B * H;
    T* c1 = c.data_ptr<T>() + (t + 1) * B * H;
    T* tcp = tc.data_ptr<T>() + t * B * H;
    const uint8_t* m = mask_row(mask, t, B);
    for (int64_t b = 0; b < B; ++b) {
      T* z = pp + b * G;
      const T* w = gp + b * G;
      const int64_t o = b * H;
      over_row<T>(H, [&](int64_t j, int64_t n) {
        Vec<T> i = sigmoid(ld(z + j, n) + ld(w + j, n));                   // input gate
        Vec<T> f = sigmoid(ld(z + H + j, n) + ld(w + H + j, n));           // forget gate
        Vec<T> g = tanh_(ld(z + 2 * H + j, n) + ld(w + 2 * H + j, n));    // candidate
        Vec<T> og = sigmoid(ld(z + 3 * H + j, n) + ld(w + 3 * H + j, n));  // output gate
        Vec<T> cn = f * ld(c0 + o + j, n) + i * g;                         // c_t = f c_{t-1} + i g
        Vec<T> tcn = tanh_(cn);
        st(i, z + j, n); st(f, z + H + j, n); st(g, z + 2 * H + j, n); st(og, z + 3 * H + j, n);
        st(tcn, tcp + o + j, n);
        if (m && !m[b]) {  // padded row keeps (h, c)_{t-1}
          st(ld(c0 + o + j, n), c1 + o + j, n);
          st(ld(h0 + o + j, n), h1 + o + j, n);
        } else {
          st(cn, c1 + o + j, n);
          st(og * tcn, h1 + o + j, n);  // h_t = o tanh(c_t)
        }
      });
    }
  }
}

// dc   = dc_t + dh_t o (1 - tanh(c_t)^2)
// dz_i = dc g i (1 - i)   dz_f = dc c_{t-1} f (1 - f)   dz_g = dc i (1 - g^2)   dz_o = dh_t tanh(c_t) o (1 - o)
// dc_{t-1} = dc f         dh_{t-1} = W^T dz
template <typename T>
std::vector<Tensor> lstm_backward_impl(Tensor& dP, const Tensor& c, const Tensor& tc, const Product& WTp,
                                       Tensor dh, Tensor dc, const Tensor& d_out, const Tensor& mask) {
  const int64_t T_ = dP.size(0), B = dP.size(1), G = dP.size(2), H = G / 4;
  Tensor dh_prev = at::empty({B, H}, dh.options());
  const T one(1);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    T* dhp = dh.data_ptr<T>();
    T* dcp = dc.data_ptr<T>();
    T* dprev = dh_prev.data_ptr<T>();
    T* zp = dP.data_ptr<T>() + t * B * G;
    const T* c0 = c.data_ptr<T>() + t * B * H;
    const T* tcp = tc.data_ptr<T>() + t * B * H;
    const T* dop = d_out.defined() ? d_out.data_ptr<T>() + t * B * H : nullptr;
    const uint8_t* m = mask_row(mask, t, B);
    for (int64_t b = 0; b < B; ++b) {
      T* z = zp + b * G;
      const int64_t o = b * H;
      if (m && !m[b]) {  // (h, c)_t = (h, c)_{t-1}: both gradients pass straight through
        std::fill(z, z + G, T(0));
        std::copy(dhp + o, dhp + o + H, dprev + o);
        continue;
      }
      over_row<T>(H, [&](int64_t j, int64_t n) {
        Vec<T> d = ld(dhp + o + j, n);
        if (dop) d = d + ld(dop + o + j, n);  // h_t also feeds the output at step t
        Vec<T> i = ld(z + j, n), f = ld(z + H + j, n), g = ld(z + 2 * H + j, n), og = ld(z + 3 * H + j, n);
        Vec<T> tcn = ld(tcp + o + j, n);
        Vec<T> dcn = ld(dcp + o + j, n) + d * (og * (Vec<T>(one) - tcn * tcn));  // dc
        st(dcn * (g * (i * (Vec<T>(one) - i))), z + j, n);                           // dz_i
        st(dcn * (ld(c0 + o + j, n) * (f * (Vec<T>(one) - f))), z + H + j, n);       // dz_f
        st(dcn * (i * (Vec<T>(one) - g * g)), z + 2 * H + j, n);                     // dz_g
        st(d * (tcn * (og * (Vec<T>(one) - og))), z + 3 * H + j, n);                 // dz_o
        st(dcn * f, dcp + o + j, n);                                                 // dc_{t-1}
        if (m) st(Vec<T>(T(0)), dprev + o + j, n);
      });
    }
    dh_prev = WTp.step<T>(dP, t, dh_prev, m != nullptr);  // dh_{t-1} = W^T dz (+ dh_t on padded rows)
    std::swap(dh, dh_prev);
  }
  return {dh, dc};
}

// -- GRU ------------------------------------------------------------------------------------------------
// gh = W h_{t-1};  r, z = sigma(p_rz + gh_rz);  n = tanh(p_n + r (gh_n + b_hn));  h_t = (1 - z) n + z h_{t-1}
template <typename T>
void gru_forward_impl(Tensor& P, Tensor& h, Tensor& ghn, const Product& Wp, const Tensor& b_hn, const Tensor& mask) {
  const int64_t T_ = P.size(0), B = P.size(1), G = P.size(2), H = G / 3;
  Tensor gh = at::empty({B, G}, P.options());
  const T* bp = b_hn.defined() ? b_hn.data_ptr<T>() : nullptr;
  for (int64_t t = 0; t < T_; ++t) {
    Tensor g_ = Wp.step<T>(h, t, gh, false);  // W h_{t-1}
    const T* gp = g_.data_ptr<T>();
    T* pp = P.data_ptr<T>() + t * B * G;
    const T* h0 = h.data_ptr<T>() + t * B * H;
    T* h1 = h.data_ptr<T>() + (t + 1) * B * H;
    T* gn = ghn.data_ptr<T>() + t * B * H;
    const uint8_t* m = mask_row(mask, t, B);
    for (int64_t b = 0; b < B; ++b) {
      T* p = pp + b * G;
      const T* w = gp + b * G;
      const int64_t o = b * H;
      over_row<T>(H, [&](int64_t j, int64_t n) {
        Vec<T> r = sigmoid(ld(p + j, n) + ld(w + j, n));          // reset gate
        Vec<T> z = sigmoid(ld(p + H + j, n) + ld(w + H + j, n));  // update gate
        Vec<T> ghn_ = ld(w + 2 * H + j, n);
        if (bp) ghn_ = ghn_ + ld(bp + j, n);                       // W_n h_{t-1} + b_hn
        Vec<T> nn = tanh_(ld(p + 2 * H + j, n) + r * ghn_);     // candidate
        Vec<T> hprev = ld(h0 + o + j, n);
        st(r, p + j, n); st(z, p + H + j, n); st(nn, p + 2 * H + j, n); st(ghn_, gn + o + j, n);
        st(m && !m[b] ? hprev : nn + z * (hprev - nn), h1 + o + j, n);  // h_t = n + z (h_{t-1} - n)
      });
    }
  }
}

// dn = dh (1 - z)(1 - n^2)   dr = dn gh_n r (1 - r)   dz = dh (h_{t-1} - n) z (1 - z)
// dp = [dr, dz, dn]          dgh = [dr, dz, dn r]      dh_{t-1} = dh z + W^T dgh
template <typename T>
Tensor gru_backward_impl(Tensor& dP, const Tensor& h, Tensor& ghn, const Product& WTp, Tensor dh,
                         const Tensor& d_out, const Tensor& mask) {
  const int64_t T_ = dP.size(0), B = dP.size(1), G = dP.size(2), H = G / 3;
  Tensor dh_prev = at::empty({B, H}, dh.options());
  Tensor dgh = at::empty({B, G}, dh.options());
  const T one(1);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    T* dhp = dh.data_ptr<T>();
    T* dprev = dh_prev.data_ptr<T>();
    T* pp = dP.data_ptr<T>() + t * B * G;
    T* gn = ghn.data_ptr<T>() + t * B * H;  // gh_n in, dgh_n out
    T* dg = dgh.data_ptr<T>();
    const T* h0 = h.data_ptr<T>() + t * B * H;
    const T* dop = d_out.defined() ? d_out.data_ptr<T>() + t * B * H : nullptr;
    const uint8_t* m = mask_row(mask, t, B);
    for (int64_t b = 0; b < B; ++b) {
      T* p = pp + b * G;
      T* q = dg + b * G;
      const int64_t o = b * H;
      if (m && !m[b]) {  // h_t = h_{t-1}: the gradient passes straight through
        std::fill(p, p + G, T(0));
        std::fill(q, q + G, T(0));
        std::fill(gn + o, gn + o + H, T(0));
        std::copy(dhp + o, dhp + o + H, dprev + o);
        continue;
      }
      over_row<T>(H, [&](int64_t j, int64_t n) {
        Vec<T> d = ld(dhp + o + j, n);
        if (dop) d = d + ld(dop + o + j, n);  // h_t also feeds the output at step t
        Vec<T> r = ld(p + j, n), z = ld(p + H + j, n), nn = ld(p + 2 * H + j, n);
        Vec<T> dn = d * ((Vec<T>(one) - z) * (Vec<T>(one) - nn * nn));
        Vec<T> dr = dn * (ld(gn + o + j, n) * (r * (Vec<T>(one) - r)));
        Vec<T> dz = d * ((ld(h0 + o + j, n) - nn) * (z * (Vec<T>(one) - z)));
        Vec<T> dgn = dn * r;
        st(dr, p + j, n); st(dz, p + H + j, n); st(dn, p + 2 * H + j, n);  // dp
        st(dr, q + j, n); st(dz, q + H + j, n); st(dgn, q + 2 * H + j, n);  // dgh
        st(dgn, gn + o + j, n);
        st(d * z, dprev + o + j, n);  // the direct path dh z
      });
    }
    WTp.add(dgh, dh_prev);  // dh_{t-1} = dh z + W^T dgh
    std::swap(dh, dh_prev);
  }
  return dh;
}

bool has_blas_op(bool f64) { return has_blas(f64 ? at::kDouble : at::kFloat); }

// -- entry points (checked by engine.py; tensors arrive contiguous, of one dtype, on the CPU) -------------
Tensor opt(const std::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

void rnn_forward(Tensor P, Tensor h, Tensor W, std::optional<Tensor> mask, bool relu, int64_t path) {
  Product Wp(W, path);
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "rnn_forward", [&] { rnn_forward_impl<scalar_t>(P, h, Wp, opt(mask), relu); });
}

Tensor rnn_backward(Tensor dP, Tensor h, Tensor W, Tensor dh, std::optional<Tensor> d_out,
                    std::optional<Tensor> mask, bool relu, int64_t path) {
  Product WTp(W.t(), path);  // W^T, a view
  Tensor out;
  AT_DISPATCH_FLOATING_TYPES(dP.scalar_type(), "rnn_backward", [&] {
    out = rnn_backward_impl<scalar_t>(dP, h, WTp, dh, opt(d_out), opt(mask), relu);
  });
  return out;
}

void lstm_forward(Tensor P, Tensor h, Tensor c, Tensor tc, Tensor W, std::optional<Tensor> mask, int64_t path) {
  Product Wp(W, path);
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "lstm_forward", [&] { lstm_forward_impl<scalar_t>(P, h, c, tc, Wp, opt(mask)); });
}

std::vector<Tensor> lstm_backward(Tensor dP, Tensor c, Tensor tc, Tensor W, Tensor dh, Tensor dc,
                                  std::optional<Tensor> d_out, std::optional<Tensor> mask, int64_t path) {
  Product WTp(W.t(), path);  // W^T, a view
  std::vector<Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(dP.scalar_type(), "lstm_backward", [&] {
    out = lstm_backward_impl<scalar_t>(dP, c, tc, WTp, dh, dc, opt(d_out), opt(mask));
  });
  return out;
}

void gru_forward(Tensor P, Tensor h, Tensor ghn, Tensor W, std::optional<Tensor> b_hn, std::optional<Tensor> mask,
                 int64_t path) {
  Product Wp(W, path);
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "gru_forward", [&] { gru_forward_impl<scalar_t>(P, h, ghn, Wp, opt(b_hn), opt(mask)); });
}

Tensor gru_backward(Tensor dP, Tensor h, Tensor ghn, Tensor W, Tensor dh, std::optional<Tensor> d_out,
                    std::optional<Tensor> mask, int64_t path) {
  Product WTp(W.t(), path);  // W^T, a view
  Tensor out;
  AT_DISPATCH_FLOATING_TYPES(dP.scalar_type(), "gru_backward", [&] {
    out = gru_backward_impl<scalar_t>(dP, h, ghn, WTp, dh, opt(d_out), opt(mask));
  });
  return out;
}

// The all-steps products, by the micro-GEMM: a @ b (+ bias on every row), and a^T @ b. a and b: 2-D CPU
// matrices whose rows may be further apart than their width (e.g. a column slice); operands whose columns
// are not adjacent (a transposed view such as U^T, or permuted features) are copied first, b into padded
// rows (padded_rows). bias: (N) or none.
void check_operands(Tensor& a, Tensor& b, int64_t k_a) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(k_a) == b.size(0) && a.scalar_type() == b.scalar_type() &&
              a.device().is_cpu() && b.device().is_cpu(), "rnnlab_loop: mm operands must be 2-D CPU matrices of one dtype");
  auto unit = [](const Tensor& t) { return t.size(1) == 1 || t.stride(1) == 1; };  // a one-column stride is moot
  if (!unit(a)) a = a.contiguous();
  if (!unit(b)) b = padded_rows(b);
}

Tensor mm_op(Tensor a, Tensor b, std::optional<Tensor> bias) {  // a (M, K) @ b (K, N) [+ bias]
  check_operands(a, b, 1);
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  Tensor c = at::empty({M, N}, a.options()), bias_ = bias.has_value() ? bias->contiguous() : Tensor();
  TORCH_CHECK(!bias_.defined() || (bias_.numel() == N && bias_.scalar_type() == a.scalar_type()),
              "rnnlab_loop: mm's bias must have one value per column of the result");
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mm", [&] {
    micro_gemm_blocked<scalar_t>(M, N, K, a.data_ptr<scalar_t>(), a.stride(0), 1, b.data_ptr<scalar_t>(), b.stride(0),
                                 c.data_ptr<scalar_t>(), N, bias_.defined() ? bias_.data_ptr<scalar_t>() : nullptr);
  });
  return c;
}

// (Seconds per product, c) for `reps` products c = a b (a row-major, b's rows contiguous) made one after another
// here, with no Python between them: blocked, as mm makes the all-steps products, or not, as each time step makes
// its product (micro_gemm on every row of a at once). For the matmul limit (rnnlab.bench.MatmulLimit), whose small
// per-step products take less than the ~3 us that a call from Python costs (64 x 32 x 32: ~0.6 us; scratch timings).
std::tuple<double, Tensor> time_mm_op(Tensor a, Tensor b, bool blocked, int64_t reps) {
  check_operands(a, b, 1);
  TORCH_CHECK(reps > 0, "rnnlab_loop: time_mm needs reps > 0");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  Tensor c = at::empty({M, N}, a.options());
  double seconds = 0;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "time_mm", [&] {
    const scalar_t *x = a.data_ptr<scalar_t>(), *w = b.data_ptr<scalar_t>();
    scalar_t* y = c.data_ptr<scalar_t>();
    auto once = [&] {
      if (blocked) micro_gemm_blocked<scalar_t>(M, N, K, x, a.stride(0), 1, w, b.stride(0), y, N);
      else micro_gemm<scalar_t>(M, N, K, x, a.stride(0), 1, w, b.stride(0), y, N, false);
    };
    once();  // operands into the caches
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < reps; ++r) once();
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(reps);
  });
  return {seconds, c};
}

// `sums` for mm_tn / mm_tn2, if given: a contiguous CPU vector of a's M columns, in a's dtype
void check_sums(const std::optional<Tensor>& sums, int64_t M, const Tensor& a) {
  TORCH_CHECK(!sums.has_value() || (sums->dim() == 1 && sums->numel() == M && sums->is_contiguous() &&
              sums->scalar_type() == a.scalar_type() && sums->device().is_cpu()),
              "rnnlab_loop: mm_tn's sums must be a contiguous CPU vector of M values");
}

// a (K, M)^T @ b (K, N): the weight gradients sum_r dy_r^T x_r, into `out` (M, N) if given (rows contiguous, e.g.
// a block of rows of a larger gradient), else a new tensor; with `sums` (M), also sums = sum_r dy_r (db).
Tensor mm_tn_op(Tensor a, Tensor b, std::optional<Tensor> out, std::optional<Tensor> sums) {
  check_operands(a, b, 0);
  const int64_t K = a.size(0), M = a.size(1), N = b.size(1);
  Tensor c = out.has_value() ? *out : at::empty({M, N}, a.options());
  TORCH_CHECK(c.dim() == 2 && c.size(0) == M && c.size(1) == N && c.stride(1) == 1 && c.scalar_type() == a.scalar_type()
              && c.device().is_cpu(), "rnnlab_loop: mm_tn's out must be an (M, N) CPU matrix with contiguous rows");
  check_sums(sums, M, a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mm_tn", [&] {
    micro_gemm_blocked<scalar_t>(M, N, K, a.data_ptr<scalar_t>(), 1, a.stride(0), b.data_ptr<scalar_t>(),
                                 b.stride(0), c.data_ptr<scalar_t>(), c.stride(0), nullptr,
                                 sums.has_value() ? sums->data_ptr<scalar_t>() : nullptr);
  });
  return c;
}

// a^T b and a^T b2 in one pass over a: the weight gradients dW = dp^T s and dU = dp^T x, which share dp (read, and
// copied into k-blocks, once for both); with `sums` (M), also sums = a's column sums (db), as mm_tn.
std::vector<Tensor> mm_tn2_op(Tensor a, Tensor b, Tensor b2, std::optional<Tensor> sums) {
  check_operands(a, b, 0);
  check_operands(a, b2, 0);
  const int64_t K = a.size(0), M = a.size(1);
  Tensor c = at::empty({M, b.size(1)}, a.options()), c2 = at::empty({M, b2.size(1)}, a.options());
  check_sums(sums, M, a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mm_tn2", [&] {
    using P = Part<scalar_t>;
    const P dW{b.data_ptr<scalar_t>(), b.stride(0), c.data_ptr<scalar_t>(), c.size(1), c.size(1), nullptr};
    const P dU{b2.data_ptr<scalar_t>(), b2.stride(0), c2.data_ptr<scalar_t>(), c2.size(1), c2.size(1), nullptr};
    micro_gemm_blocked<scalar_t>(M, K, a.data_ptr<scalar_t>(), 1, a.stride(0), {dW, dU},
                                 sums.has_value() ? sums->data_ptr<scalar_t>() : nullptr);
  });
  return {c, c2};
}

// The embedding's gradient, dE = sum_r onehot(id_r) d_r^T: a (V, D) matrix of zeros (memset) with d's row r added
// into row id_r, in order (so the same sums as torch's index_add_). ids: any shape of int64, d: (*ids.shape, D).
Tensor embedding_backward_op(Tensor d, Tensor ids, int64_t V) {
  TORCH_CHECK(ids.scalar_type() == at::kLong && d.dim() == ids.dim() + 1 && d.sizes().slice(0, ids.dim()) == ids.sizes()
              && d.device().is_cpu() && ids.device().is_cpu(),
              "rnnlab_loop: embedding_backward takes int64 ids and their gradients d (*ids.shape, D) on the CPU");
  d = d.contiguous();
  ids = ids.contiguous();
  const int64_t N = ids.numel(), D = d.size(-1);
  Tensor dE = at::empty({V, D}, d.options());
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "embedding_backward", [&] {
    scalar_t* e = dE.data_ptr<scalar_t>();
    std::memset(e, 0, sizeof(scalar_t) * V * D);
    const scalar_t* dp = d.data_ptr<scalar_t>();
    const int64_t* id = ids.data_ptr<int64_t>();
    for (int64_t r = 0; r < N; ++r) {
      TORCH_CHECK(0 <= id[r] && id[r] < V, "rnnlab_loop: embedding_backward: id ", id[r], " outside 0..", V - 1);
      scalar_t* row = e + id[r] * D;
      const scalar_t* src = dp + r * D;
      over_row<scalar_t>(D, [&](int64_t j, int64_t n) { st(ld(row + j, n) + ld(src + j, n), row + j, n); });
    }
  });
  return dE;
}

Tensor tanh_op(Tensor x) {  // the loop's point-wise tanh, element by element, for tests
  Tensor xc = x.contiguous(), y = at::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tanh", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    over_row<scalar_t>(xc.numel(), [&](int64_t j, int64_t n) { st(tanh_(ld(xp + j, n)), yp + j, n); });
  });
  return y;
}

int64_t parallel_threads_op() {  // how many threads at::parallel_for runs here (1 if built without OpenMP)
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, 64, 1, [&](int64_t, int64_t) { seen |= uint64_t(1) << (at::get_thread_num() % 64); });
  return __builtin_popcountll(seen.load());
}

}  // namespace

TORCH_LIBRARY(rnnlab_loop, m) {
  m.def("has_blas(bool f64) -> bool", &has_blas_op);
  m.def("mm(Tensor a, Tensor b, Tensor? bias) -> Tensor", &mm_op);
  m.def("time_mm(Tensor a, Tensor b, bool blocked, int reps) -> (float, Tensor)", &time_mm_op);
  m.def("mm_tn(Tensor a, Tensor b, Tensor(c!)? out=None, Tensor(d!)? sums=None) -> Tensor", &mm_tn_op);
  m.def("tanh(Tensor x) -> Tensor", &tanh_op);
  m.def("embedding_backward(Tensor d, Tensor ids, int V) -> Tensor", &embedding_backward_op);
  m.def("mm_tn2(Tensor a, Tensor b, Tensor b2, Tensor(d!)? sums=None) -> Tensor[]", &mm_tn2_op);
  m.def("parallel_threads() -> int", &parallel_threads_op);
  m.def("rnn_forward(Tensor(a!) P, Tensor(b!) h, Tensor W, Tensor? mask, bool relu, int path) -> ()", &rnn_forward);
  m.def("rnn_backward(Tensor(a!) dP, Tensor h, Tensor W, Tensor(b!) dh, Tensor? d_out, Tensor? mask, bool relu, "
        "int path) -> Tensor", &rnn_backward);
  m.def("lstm_forward(Tensor(a!) P, Tensor(b!) h, Tensor(c!) c, Tensor(d!) tc, Tensor W, Tensor? mask, int path) -> ()",
        &lstm_forward);
  m.def("lstm_backward(Tensor(a!) dP, Tensor c, Tensor tc, Tensor W, Tensor(b!) dh, Tensor(c!) dc, Tensor? d_out, "
        "Tensor? mask, int path) -> Tensor[]", &lstm_backward);
  m.def("gru_forward(Tensor(a!) P, Tensor(b!) h, Tensor(c!) ghn, Tensor W, Tensor? b_hn, Tensor? mask, int path) -> ()",
        &gru_forward);
  m.def("gru_backward(Tensor(a!) dP, Tensor h, Tensor(b!) ghn, Tensor W, Tensor(c!) dh, Tensor? d_out, Tensor? mask, "
        "int path) -> Tensor", &gru_backward);
}
