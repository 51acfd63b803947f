// 3x3, stride-1 convolutions on x86 CPUs, as XLA FFI handlers
// (cifar_jax/conv3x3.py builds and registers them):
// - CifarJaxConv3x3: the convolution y = conv(x, k), NHWC and HWIO. With the
//   kernel flipped and its channel axes swapped, it is the input gradient
//   too (conv3x3.py).
// - CifarJaxConv3x3KernelGrad: the kernel gradient dk from x and the output
//   gradient g.
// XLA:CPU ran both at about half the speed (docs/cpu_performance.md): its
// kernel gradient first transposes both operands and then leaves the second
// core idle. Here every sum runs over the NHWC operands directly, in
// register tiles of fused multiply-adds, on XLA's intra-op thread pool.
//
// The source is built once per instruction set: with -DCIFAR_JAX_AVX512
// for AVX-512 (32 registers of 16 floats), and without it for AVX2 with FMA
// (16 registers of 8 floats). Only the tiles' code uses those instructions;
// the rest is plain x86-64, so loading a library on a CPU without them is
// safe, and CifarJaxCpuSupported says whether its tiles may run.
//
// The kernel gradient, for padding pt (top) and pl (left):
//
//   dk[i, j, c, o] = sum over n, y, x of
//                    x[n, y + i - pt, x + j - pl, c] * g[n, y, x, o]
//
// with x = 0 outside the image. For each tap (i, j), a tile of R input
// channels by V vectors of output channels stays in R * V registers while a
// group of images streams past: per position, V loads of g, R broadcasts of
// x and R * V fused multiply-adds.
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

#ifdef CIFAR_JAX_AVX512
#define CIFAR_JAX_TARGET "avx512f"
using Vec = __m512;
constexpr int kLanes = 16;
// Registers for accumulators: 24 of the 32, the rest hold k (or g) and x.
constexpr int kAccumulators = 24;
// The most vectors of output channels a tile spans.
constexpr int kMaxBlocks = 4;
#define CIFAR_JAX_VEC(op) _mm512_##op
#else
#define CIFAR_JAX_TARGET "avx2,fma"
using Vec = __m256;
constexpr int kLanes = 8;
// 12 of the 16 registers; two vectors wide, that leaves 2 for k (or g) and
// 1 for x.
constexpr int kAccumulators = 12;
constexpr int kMaxBlocks = 2;
#define CIFAR_JAX_VEC(op) _mm256_##op
#endif

// The code that uses the vector instructions: only ever called once
// CifarJaxCpuSupported() has said the CPU has them.
#define CIFAR_JAX_VECTOR_CODE __attribute__((target(CIFAR_JAX_TARGET)))
#define CIFAR_JAX_INLINE CIFAR_JAX_VECTOR_CODE __attribute__((always_inline)) inline

CIFAR_JAX_INLINE Vec Zero() { return CIFAR_JAX_VEC(setzero_ps)(); }
CIFAR_JAX_INLINE Vec Load(const float* p) { return CIFAR_JAX_VEC(loadu_ps)(p); }
CIFAR_JAX_INLINE Vec Broadcast(float v) { return CIFAR_JAX_VEC(set1_ps)(v); }
CIFAR_JAX_INLINE Vec MultiplyAdd(Vec a, Vec b, Vec c) {
  return CIFAR_JAX_VEC(fmadd_ps)(a, b, c);
}
CIFAR_JAX_INLINE void Store(float* p, Vec v) { CIFAR_JAX_VEC(storeu_ps)(p, v); }

// x (n, h, w, c), the output (n, oh, ow, o), padding pt (top), pl (left).
struct Shape {
  int64_t n, h, w, c, oh, ow, o, pt, pl;
  int64_t pw() const { return ow + 2; }  // Width of a padded copy of x.
};

// Positions per group of images: a group's slices of x and g stay in L2.
constexpr int64_t kGroupPositions = 1024;

// dk[i, j, c0:c0+R, o0:o0+kLanes*V] summed over images [n0, n1), stored to `part`
// (9 * C * O floats laid out as dk).
template <int R, int V>
CIFAR_JAX_VECTOR_CODE void Tile(const Shape& s, const float* x, const float* g,
                               float* part, int64_t n0, int64_t n1, int i,
                               int j, int64_t c0, int64_t o0) {
  Vec acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = Zero();
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
        Vec gv[V];
        for (int v = 0; v < V; ++v) gv[v] = Load(gs + t * s.o + kLanes * v);
        for (int r = 0; r < R; ++r) {
          const Vec xb = Broadcast(xs[t * s.c + r]);
          for (int v = 0; v < V; ++v) acc[r][v] = MultiplyAdd(xb, gv[v], acc[r][v]);
        }
      }
    }
  }
  float* out = part + ((i * 3 + j) * s.c + c0) * s.o + o0;
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) Store(out + r * s.o + kLanes * v, acc[r][v]);
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

// All input channels for output channels [o0, o0 + kLanes V), in tiles of equal
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
      constexpr int64_t kWidest = kLanes * kMaxBlocks;
      for (; o0 + kWidest <= s.o; o0 += kWidest)
        Channels<kMaxBlocks>(s, x, g, part, n0, n1, i, j, o0);
      switch ((s.o - o0) / kLanes) {  // Only where kMaxBlocks leaves one.
        case 3: Channels<3>(s, x, g, part, n0, n1, i, j, o0); break;
        case 2: Channels<2>(s, x, g, part, n0, n1, i, j, o0); break;
        case 1: Channels<1>(s, x, g, part, n0, n1, i, j, o0); break;
        default: break;
      }
    }
  }
}

// The convolution: y[n, oy, ox, o] = sum over i, j, c of
//                   x[n, oy + i - pt, ox + j - pl, c] * k[i, j, c, o]
// Each image is first copied with its zero padding, so that every tap reads
// inside the copy. A tile of P neighbouring positions of one output row by
// V vectors of output channels stays in P * V registers while the 9 C terms stream
// past: per term, V loads of k, P broadcasts of x and P * V fused
// multiply-adds. Each output element is one thread's sum in a fixed order,
// so the result does not depend on the thread count.

template <int P, int V>
CIFAR_JAX_VECTOR_CODE void ForwardTile(const Shape& s, const float* xpad,
                                      const float* k, float* y, int64_t oy,
                                      int64_t ox0, int64_t o0) {
  Vec acc[P][V];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) acc[p][v] = Zero();
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      const float* xs = xpad + ((oy + i) * s.pw() + ox0 + j) * s.c;
      const float* ks = k + (i * 3 + j) * s.c * s.o + o0;
      for (int64_t c = 0; c < s.c; ++c) {
        Vec kv[V];
        for (int v = 0; v < V; ++v) kv[v] = Load(ks + c * s.o + kLanes * v);
        for (int p = 0; p < P; ++p) {
          const Vec xb = Broadcast(xs[p * s.c + c]);
          for (int v = 0; v < V; ++v) acc[p][v] = MultiplyAdd(xb, kv[v], acc[p][v]);
        }
      }
    }
  }
  float* out = y + (oy * s.ow + ox0) * s.o + o0;
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) Store(out + p * s.o + kLanes * v, acc[p][v]);
}

// ForwardTile<positions, V> for a run-time `positions` in 1..P.
template <int V, int P>
void ForwardTileOf(int positions, const Shape& s, const float* xpad,
                   const float* k, float* y, int64_t oy, int64_t ox0,
                   int64_t o0) {
  if constexpr (P > 0) {
    if (positions == P) return ForwardTile<P, V>(s, xpad, k, y, oy, ox0, o0);
    ForwardTileOf<V, P - 1>(positions, s, xpad, k, y, oy, ox0, o0);
  }
}

// Output channels [o0, o0 + kLanes V) of one image, row by row, in tiles of
// equal width (at most kAccumulators / V positions each).
template <int V>
void ForwardChannels(const Shape& s, const float* xpad, const float* k,
                     float* y, int64_t o0) {
  constexpr int kPositions = kAccumulators / V;
  const int64_t tiles = (s.ow + kPositions - 1) / kPositions;
  for (int64_t oy = 0; oy < s.oh; ++oy) {
    int64_t ox0 = 0;
    for (int64_t t = 0; t < tiles; ++t) {
      const int positions = static_cast<int>((s.ow - ox0) / (tiles - t));
      ForwardTileOf<V, kPositions>(positions, s, xpad, k, y, oy, ox0, o0);
      ox0 += positions;
    }
  }
}

// V, the width in vectors of the output channels a tile covers, for output
// rows of `ow` positions and `blocks` vectors of output channels. Wide
// tiles (large V) load fewer x values per multiply-add, long ones (many
// positions) load each value of k for more of them: k is read from L2
// once per tile, and that, not the multiply-adds, bounds the short tiles
// of 8-wide rows. Among the widths that divide the blocks evenly (V = 1
// only when nothing else does; it loads one x per multiply-add), the one
// with the most accumulators per tile on average; of equals, the longer
// tile.
int ForwardBlockWidth(int64_t ow, int64_t blocks) {
  int best = 0;
  double best_accumulators = 0, best_positions = 0;
  for (int v = kMaxBlocks; v >= 2; --v) {
    if (blocks % v != 0) continue;
    const int64_t cap = kAccumulators / v;
    const int64_t tiles = (ow + cap - 1) / cap;
    const double positions = static_cast<double>(ow) / tiles;
    const double accumulators = positions * v;
    if (accumulators > best_accumulators ||
        (accumulators == best_accumulators && positions > best_positions)) {
      best = v;
      best_accumulators = accumulators;
      best_positions = positions;
    }
  }
  if (best == 0) return blocks == 1 ? 1 : kMaxBlocks;  // Then the remainder.
  return best;
}

// One image: its padded copy into `xpad`, then every output channel, in
// tiles V = `v` blocks wide (`ForwardBlockWidth`).
void ForwardImage(const Shape& s, int v, const float* x, const float* k,
                  float* y, float* xpad) {
  const int64_t rows = s.oh + 2, cols = s.pw();
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = xpad + r * cols * s.c;
    const int64_t row = r - s.pt;
    if (row < 0 || row >= s.h) {
      std::fill(dst, dst + cols * s.c, 0.f);
      continue;
    }
    // Columns q of the copy hold x[row, q - pl] where 0 <= q - pl < w.
    const int64_t lo = std::min(cols, std::max<int64_t>(0, s.pl));
    const int64_t hi = std::max(lo, std::min(cols, s.w + s.pl));
    std::fill(dst, dst + lo * s.c, 0.f);
    std::copy(x + (row * s.w + lo - s.pl) * s.c,
              x + (row * s.w + hi - s.pl) * s.c, dst + lo * s.c);
    std::fill(dst + hi * s.c, dst + cols * s.c, 0.f);
  }
  int64_t o0 = 0;
  for (; o0 + kLanes * v <= s.o; o0 += kLanes * v) {
    switch (v) {
      case 4: ForwardChannels<4>(s, xpad, k, y, o0); break;
      case 3: ForwardChannels<3>(s, xpad, k, y, o0); break;
      case 2: ForwardChannels<2>(s, xpad, k, y, o0); break;
      default: ForwardChannels<1>(s, xpad, k, y, o0); break;
    }
  }
  switch ((s.o - o0) / kLanes) {  // Only where v = kMaxBlocks leaves one.
    case 3: ForwardChannels<3>(s, xpad, k, y, o0); break;
    case 2: ForwardChannels<2>(s, xpad, k, y, o0); break;
    case 1: ForwardChannels<1>(s, xpad, k, y, o0); break;
    default: break;
  }
}

// Calls body(k) for k in [0, items), handing items out one at a time to
// whichever of the pool's threads (and this one) asks next. The caller waits
// only for items some thread has taken, so a task the pool starts late (or
// never) cannot hold it up.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t items, Body body) {
  struct Work {
    std::atomic<int64_t> next{0};
    int64_t finished = 0;
    std::mutex mu;
    std::condition_variable all_done;
  };
  auto work = std::make_shared<Work>();
  auto run = [work, items, body] {
    int64_t k, done = 0;
    while ((k = work->next.fetch_add(1)) < items) {
      body(k);
      ++done;
    }
    if (done == 0) return;
    std::lock_guard<std::mutex> lock(work->mu);
    work->finished += done;
    if (work->finished == items) work->all_done.notify_all();
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), items) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(run)(run));
  run();
  std::unique_lock<std::mutex> lock(work->mu);
  work->all_done.wait(lock, [&] { return work->finished == items; });
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                      ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t pad_top,
                      int64_t pad_left) {
  const auto xd = x.dimensions(), gd = g.dimensions(), kd = dk->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || kd.size() != 4 || xd[0] != gd[0] ||
      kd[0] != 3 || kd[1] != 3 || kd[2] != xd[3] || kd[3] != gd[3] ||
      gd[3] % 16 != 0 || pad_top < 0 || pad_left < 0) {
    return ffi::Error::InvalidArgument(
        "cifar_jax_conv3x3_kernel_grad: expects x (N, H, W, C), g (N, OH, OW, O) "
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
  ParallelFor(pool, groups, [s, xp, gp, pp, per_group, size](int64_t k) {
    Group(s, xp, gp, pp + k * size, k * per_group,
          std::min(s.n, (k + 1) * per_group));
  });
  std::copy(pp, pp + size, out);
  for (int64_t k = 1; k < groups; ++k)
    for (size_t e = 0; e < size; ++e) out[e] += pp[k * size + e];
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                   ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> y,
                   int64_t pad_top, int64_t pad_left) {
  const auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4 || xd[0] != yd[0] ||
      kd[0] != 3 || kd[1] != 3 || kd[2] != xd[3] || kd[3] != yd[3] ||
      yd[3] % 16 != 0 || pad_top < 0 || pad_left < 0 ||
      yd[1] + 2 < xd[1] + pad_top || yd[2] + 2 < xd[2] + pad_left) {
    return ffi::Error::InvalidArgument(
        "cifar_jax_conv3x3: expects x (N, H, W, C), k (3, 3, C, O) with O a "
        "multiple of 16, y (N, OH, OW, O), padding >= 0 that fits");
  }
  const Shape s{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], pad_top, pad_left};
  const float* xp = x.typed_data();
  const float* kp = k.typed_data();
  float* yp = y->typed_data();
  const int64_t copy = (s.oh + 2) * s.pw() * s.c;
  const int v = ForwardBlockWidth(s.ow, s.o / kLanes);
  ParallelFor(pool, s.n, [s, v, xp, kp, yp, copy](int64_t n) {
    std::unique_ptr<float[]> xpad(new float[copy]);
    ForwardImage(s, v, xp + n * s.h * s.w * s.c, kp,
                 yp + n * s.oh * s.ow * s.o, xpad.get());
  });
  return ffi::Error::Success();
}

// Both handlers' signature: two float32 arrays in, one out, and the padding
// at the top and the left (the rest follows from the shapes).
auto Binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CifarJaxConv3x3KernelGrad, KernelGrad, Binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(CifarJaxConv3x3, Forward, Binding());

// Whether this CPU has the instructions this build's tiles use (checked
// before registering the handlers).
extern "C" int CifarJaxCpuSupported() {
#ifdef CIFAR_JAX_AVX512
  return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
#endif
}
