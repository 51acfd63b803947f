// The kernel gradient of a 3x3, stride-1 convolution on x86 CPUs with
// AVX-512, as an XLA FFI handler (cifar_jax/conv_kernel_grad.py builds and
// registers it).
//
// For an NHWC input x (N, H, W, C), the output gradient g (N, OH, OW, O) and
// padding pt (top) and pl (left):
//
//   dk[i, j, c, o] = sum over n, y, x of
//                    x[n, y + i - pt, x + j - pl, c] * g[n, y, x, o]
//
// with x = 0 outside the image. XLA:CPU computes this as a convolution whose
// batch is the input's channels, which first transposes both operands and
// then leaves the second core idle; here the sum runs over NHWC directly.
// For each tap (i, j), a tile of R input channels by 16 V output channels
// stays in R * V AVX-512 registers while a group of images streams past:
// per position, V loads of g, R broadcasts of x and R * V fused
// multiply-adds.
//
// Determinism: each group of images (about 1024 positions) writes its own
// partial sum, and the partials are added in group order, so the result does
// not depend on how many threads ran or in which order they finished.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Shape {
  int64_t n, h, w, c, oh, ow, o, pt, pl;
};

// Positions per group of images: a group's slices of x and g stay in L2.
constexpr int64_t kGroupPositions = 1024;
// Registers for accumulators: 24 of the 32, the rest hold g and x.
constexpr int kAccumulators = 24;

// dk[i, j, c0:c0+R, o0:o0+16V] summed over images [n0, n1), stored to `part`
// (9 * C * O floats laid out as dk).
template <int R, int V>
__attribute__((target("avx512f"))) void Tile(const Shape& s, const float* x,
                                             const float* g, float* part,
                                             int64_t n0, int64_t n1, int i,
                                             int j, int64_t c0, int64_t o0) {
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  // Output columns whose input column x + j - pl lies inside the image.
  const int64_t lo = std::max<int64_t>(0, s.pl - j);
  const int64_t hi = std::min<int64_t>(s.ow, s.w + s.pl - j);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t y = 0; y < s.oh; ++y) {
      const int64_t row = y + i - s.pt;
      if (row < 0 || row >= s.h) continue;
      const float* xs = x + ((n * s.h + row) * s.w + lo + j - s.pl) * s.c + c0;
      const float* gs = g + ((n * s.oh + y) * s.ow + lo) * s.o + o0;
      for (int64_t t = 0; t < hi - lo; ++t) {
        __m512 gv[V];
        for (int v = 0; v < V; ++v) gv[v] = _mm512_loadu_ps(gs + t * s.o + 16 * v);
        for (int r = 0; r < R; ++r) {
          const __m512 xb = _mm512_set1_ps(xs[t * s.c + r]);
          for (int v = 0; v < V; ++v)
            acc[r][v] = _mm512_fmadd_ps(xb, gv[v], acc[r][v]);
        }
      }
    }
  }
  float* out = part + ((i * 3 + j) * s.c + c0) * s.o + o0;
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(out + r * s.o + 16 * v, acc[r][v]);
}

// Tile<rows, V> for a run-time `rows` in 1..R.
template <int V, int R>
void TileOf(int rows, const Shape& s, const float* x, const float* g,
            float* part, int64_t n0, int64_t n1, int i, int j, int64_t c0,
            int64_t o0) {
  if constexpr (R > 0) {
    if (rows == R) return Tile<R, V>(s, x, g, part, n0, n1, i, j, c0, o0);
    TileOf<V, R - 1>(rows, s, x, g, part, n0, n1, i, j, c0, o0);
  }
}

// All input channels for output channels [o0, o0 + 16V), in tiles of equal
// height (at most kAccumulators / V rows each).
template <int V>
void Channels(const Shape& s, const float* x, const float* g, float* part,
              int64_t n0, int64_t n1, int i, int j, int64_t o0) {
  constexpr int kRows = kAccumulators / V;
  const int64_t tiles = (s.c + kRows - 1) / kRows;
  int64_t c0 = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int rows = static_cast<int>((s.c - c0) / (tiles - t));
    TileOf<V, kRows>(rows, s, x, g, part, n0, n1, i, j, c0, o0);
    c0 += rows;
  }
}

// The whole dk of images [n0, n1) into `part`.
void Group(const Shape& s, const float* x, const float* g, float* part,
           int64_t n0, int64_t n1) {
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      int64_t o0 = 0;
      for (; o0 + 64 <= s.o; o0 += 64) Channels<4>(s, x, g, part, n0, n1, i, j, o0);
      switch ((s.o - o0) / 16) {
        case 3: Channels<3>(s, x, g, part, n0, n1, i, j, o0); break;
        case 2: Channels<2>(s, x, g, part, n0, n1, i, j, o0); break;
        case 1: Channels<1>(s, x, g, part, n0, n1, i, j, o0); break;
        default: break;
      }
    }
  }
}

// Groups handed out one at a time to whichever thread asks next. The caller
// waits only for groups some thread has taken, so a task the pool starts
// late (or never) cannot hold it up.
struct Work {
  std::atomic<int64_t> next{0};
  int64_t finished = 0;
  std::mutex mu;
  std::condition_variable all_done;
};

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                      ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t pad_top,
                      int64_t pad_left) {
  const auto xd = x.dimensions(), gd = g.dimensions(), kd = dk->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || kd.size() != 4 || xd[0] != gd[0] ||
      kd[0] != 3 || kd[1] != 3 || kd[2] != xd[3] || kd[3] != gd[3] ||
      gd[3] % 16 != 0 || pad_top < 0 || pad_left < 0) {
    return ffi::Error::InvalidArgument(
        "cifar_jax_conv_kernel_grad: expects x (N, H, W, C), g (N, OH, OW, O) "
        "with O a multiple of 16, dk (3, 3, C, O), padding >= 0");
  }
  const Shape s{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], gd[3], pad_top, pad_left};
  const size_t size = 9 * s.c * s.o;
  float* out = dk->typed_data();
  const int64_t per_group =
      std::max<int64_t>(1, kGroupPositions / std::max<int64_t>(1, s.oh * s.ow));
  const int64_t groups = (s.n + per_group - 1) / per_group;
  if (groups == 0) {
    std::fill(out, out + size, 0.f);
    return ffi::Error::Success();
  }
  // Every element is written by its group before it is read.
  std::unique_ptr<float[]> parts(new float[groups * size]);
  const float* xp = x.typed_data();
  const float* gp = g.typed_data();
  float* pp = parts.get();
  auto work = std::make_shared<Work>();
  auto run = [work, s, xp, gp, pp, per_group, groups, size] {
    int64_t k, done = 0;
    while ((k = work->next.fetch_add(1)) < groups) {
      Group(s, xp, gp, pp + k * size, k * per_group,
            std::min(s.n, (k + 1) * per_group));
      ++done;
    }
    if (done == 0) return;
    std::lock_guard<std::mutex> lock(work->mu);
    work->finished += done;
    if (work->finished == groups) work->all_done.notify_all();
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), groups) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(run)(run));
  run();
  {
    std::unique_lock<std::mutex> lock(work->mu);
    work->all_done.wait(lock, [&] { return work->finished == groups; });
  }
  std::copy(pp, pp + size, out);
  for (int64_t k = 1; k < groups; ++k)
    for (size_t e = 0; e < size; ++e) out[e] += pp[k * size + e];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CifarJaxConvKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

// Whether this CPU runs the AVX-512 code above (checked before registering).
extern "C" int CifarJaxCpuHasAvx512f() {
  return __builtin_cpu_supports("avx512f") ? 1 : 0;
}
