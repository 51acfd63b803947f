// 3x3, stride-1 convolutions on x86 CPUs, as XLA FFI handlers
// (cifar_jax/conv3x3.py builds and registers them):
// - CifarJaxConv3x3: the convolution y = conv(x, k), NHWC and HWIO. With the
//   kernel flipped and its channel axes swapped, it is the input gradient
//   too (conv3x3.py).
// - CifarJaxConv3x3KernelGrad: the kernel gradient dk from x and the output
//   gradient g.
// XLA:CPU ran both at about half the speed (docs/cpu_performance.md): its
// kernel gradient first transposes both operands and then leaves the second
// core idle. Here every sum runs over the NHWC operands, in register tiles
// of fused multiply-adds, on XLA's intra-op thread pool. Each handler has
// two ways to sum, chosen by its `winograd` attribute: the direct sums, and
// Winograd's algorithm (2.25 times fewer multiply-adds; it needs the input
// channels in whole vectors).
//
// The source is built once per instruction set: with -DCIFAR_JAX_AVX512
// for AVX-512 (32 registers of 16 floats), and without it for AVX2 with FMA
// (16 registers of 8 floats). Only the tiles' and transforms' code uses
// those instructions; the rest is plain x86-64, so loading a library on a
// CPU without them is safe, and CifarJaxCpuSupported says whether its
// vector code may run.
//
// The kernel gradient, for padding pt (top) and pl (left):
//
//   dk[i, j, c, o] = sum over n, y, x of
//                    x[n, y + i - pt, x + j - pl, c] * g[n, y, x, o]
//
// with x = 0 outside the image. Directly: for each tap (i, j), a tile of R
// input channels by V vectors of output channels stays in R * V registers
// while a group of images streams past: per position, V loads of g, R
// broadcasts of x and R * V fused multiply-adds.
//
// Determinism: each group (of images, or of Winograd's blocks; about 1024
// positions) writes its own partial sum, and the partials are added in
// group order, so the result does not depend on how many threads ran or in
// which order they finished.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <type_traits>

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
CIFAR_JAX_INLINE Vec Add(Vec a, Vec b) { return CIFAR_JAX_VEC(add_ps)(a, b); }
CIFAR_JAX_INLINE Vec Subtract(Vec a, Vec b) { return CIFAR_JAX_VEC(sub_ps)(a, b); }
CIFAR_JAX_INLINE Vec Half(Vec a) {
  return CIFAR_JAX_VEC(mul_ps)(a, CIFAR_JAX_VEC(set1_ps)(0.5f));
}

// x (n, h, w, c), the output (n, oh, ow, o), padding pt (top), pl (left).
struct Shape {
  int64_t n, h, w, c, oh, ow, o, pt, pl;
  int64_t pw() const { return ow + 2; }  // Width of a padded copy of x.
};

// Positions per group of images: a group's slices of x and g stay in L2.
constexpr int64_t kGroupPositions = 1024;

// Calls body(std::integral_constant<int, n>()) for a run-time n in 1..N, so
// that a count known only at run time can pick a tile's template.
template <int N, typename Body>
void WithConstant(int n, Body&& body) {
  if constexpr (N > 0) {
    if (n == N) return body(std::integral_constant<int, N>());
    WithConstant<N - 1>(n, body);
  }
}

// Calls body(start, count) for [0, n) cut in order into the fewest parts
// of at most `most`, of equal size but for one at most (tiles of equal
// height use the registers more evenly than full ones and a short last).
template <typename Body>
void EqualParts(int64_t n, int64_t most, Body&& body) {
  const int64_t parts = (n + most - 1) / most;
  int64_t start = 0;
  for (int64_t part = 0; part < parts; ++part) {
    const int64_t count = (n - start) / (parts - part);
    body(start, static_cast<int>(count));
    start += count;
  }
}

// Calls body(o0, std::integral_constant<int, V>()) for the `o` output
// channels in blocks of V = `width` vectors, and the rest (where `width`
// does not divide them) as one narrower block.
template <typename Body>
void ChannelBlocks(int64_t o, int width, Body&& body) {
  int64_t o0 = 0;
  for (; o0 + kLanes * width <= o; o0 += kLanes * width)
    WithConstant<kMaxBlocks>(width, [&](auto v) { body(o0, v); });
  const int rest = static_cast<int>((o - o0) / kLanes);
  if (rest > 0) WithConstant<kMaxBlocks>(rest, [&](auto v) { body(o0, v); });
}

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

// The whole dk of images [n0, n1) into `part`: per tap, tiles of at most
// kAccumulators / V input channels by V vectors of output channels.
void Group(const Shape& s, const float* x, const float* g, float* part,
           int64_t n0, int64_t n1) {
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      ChannelBlocks(s.o, kMaxBlocks, [&](int64_t o0, auto width) {
        constexpr int V = decltype(width)::value, kRows = kAccumulators / V;
        EqualParts(s.c, kRows, [&](int64_t c0, int rows) {
          WithConstant<kRows>(rows, [&](auto r) {
            Tile<decltype(r)::value, V>(s, x, g, part, n0, n1, i, j, c0, o0);
          });
        });
      });
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

// Image x's copy with its zero padding: `rows` by `cols` positions, where
// position (r, q) holds x[r - pt, q - pl], zero outside the image.
void PadImage(const Shape& s, const float* x, int64_t rows, int64_t cols,
              float* xpad) {
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
}

// One image: its padded copy into `xpad`, then every output channel, row
// by row, in tiles V = `v` blocks wide (`ForwardBlockWidth`) of at most
// kAccumulators / V positions.
void ForwardImage(const Shape& s, int v, const float* x, const float* k,
                  float* y, float* xpad) {
  PadImage(s, x, s.oh + 2, s.pw(), xpad);
  ChannelBlocks(s.o, v, [&](int64_t o0, auto width) {
    constexpr int V = decltype(width)::value, kPositions = kAccumulators / V;
    for (int64_t oy = 0; oy < s.oh; ++oy) {
      EqualParts(s.ow, kPositions, [&](int64_t ox0, int positions) {
        WithConstant<kPositions>(positions, [&](auto p) {
          ForwardTile<decltype(p)::value, V>(s, xpad, k, y, oy, ox0, o0);
        });
      });
    }
  });
}

// Winograd's F(2x2, 3x3): each 2x2 block of outputs from the 4x4 patch d of
// the input around it, as
//
//   Y = A^T [ sum over c of (G k G^T)[c, o] * (B^T d B)[c] ] A
//
// (elementwise products of 4x4 matrices; A, B and G as in Lavin and Gray,
// "Fast Algorithms for Convolutional Neural Networks", 2016). The sum over c
// is 16 matrix products, one per element of the 4x4 transforms: 16
// multiply-adds per 4 outputs and channel pair where the direct sum takes
// 36. B and A only add and subtract and G halves, so results differ from the
// direct sum by float rounding (tests/conv3x3_test.py). Each output block is
// one thread's work in a fixed order, so results do not depend on the thread
// count. Used where the input channels fill whole vectors (conv3x3.py); the
// direct sum above stays for the rest (the first layer's 3 channels).
//
// The blocks are numbered over the whole batch, image by image and row by
// row, and handled in chunks whose transforms stay in L2.

// Blocks per group of the kernel gradient: as many positions as the direct
// sum's groups.
constexpr int64_t kGroupBlocks = kGroupPositions / 4;
// The most memory the kernel gradient's partial sums of one round take.
constexpr int64_t kRoundBytes = int64_t{64} << 20;

struct Blocks {
  int64_t tiles_h, tiles_w;
  explicit Blocks(const Shape& s)
      : tiles_h((s.oh + 1) / 2), tiles_w((s.ow + 1) / 2) {}
  int64_t per_image() const { return tiles_h * tiles_w; }
};

// Blocks per chunk: its two transforms, 16 (C + O) floats a block, take
// about 512 KiB.
int64_t ChunkBlocks(const Shape& s) {
  return std::max<int64_t>(2 * kAccumulators, 8192 / (s.c + s.o));
}

// u[e, c, o] for e = 4a + b: (G k[:, :, c, o] G^T)[a, b], with
//   G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
CIFAR_JAX_VECTOR_CODE void TransformKernel(const Shape& s, const float* k,
                                          float* u) {
  for (int64_t c = 0; c < s.c; ++c) {
    for (int64_t o0 = 0; o0 < s.o; o0 += kLanes) {
      Vec g[3][3], t[4][3];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) g[i][j] = Load(k + ((i * 3 + j) * s.c + c) * s.o + o0);
      for (int j = 0; j < 3; ++j) {  // t = G g
        const Vec ends = Add(g[0][j], g[2][j]);
        t[0][j] = g[0][j];
        t[1][j] = Half(Add(ends, g[1][j]));
        t[2][j] = Half(Subtract(ends, g[1][j]));
        t[3][j] = g[2][j];
      }
      for (int a = 0; a < 4; ++a) {  // u = t G^T
        const Vec ends = Add(t[a][0], t[a][2]);
        const Vec row[4] = {t[a][0], Half(Add(ends, t[a][1])),
                            Half(Subtract(ends, t[a][1])), t[a][2]};
        for (int b = 0; b < 4; ++b) Store(u + ((a * 4 + b) * s.c + c) * s.o + o0, row[b]);
      }
    }
  }
}

// v[e, t - t0, c] for the blocks t in [t0, t1): (B^T d B)[a, b] of the 4x4
// patch d of x over block t, zero outside the image (`zeros`: C zeros), with
//   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
CIFAR_JAX_VECTOR_CODE void TransformInput(const Shape& s, const Blocks& blocks,
                                         const float* x, const float* zeros,
                                         int64_t t0, int64_t t1, float* v) {
  const int64_t rows = t1 - t0, step = rows * s.c;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / blocks.per_image(), rest = t % blocks.per_image();
    const int64_t ty = rest / blocks.tiles_w, tx = rest % blocks.tiles_w;
    const float* at[4][4];
    for (int a = 0; a < 4; ++a) {
      const int64_t row = 2 * ty + a - s.pt;
      for (int b = 0; b < 4; ++b) {
        const int64_t col = 2 * tx + b - s.pl;
        const bool inside = row >= 0 && row < s.h && col >= 0 && col < s.w;
        at[a][b] = inside ? x + ((n * s.h + row) * s.w + col) * s.c : zeros;
      }
    }
    for (int64_t c0 = 0; c0 < s.c; c0 += kLanes) {
      Vec d[4][4], r[4][4];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) d[a][b] = Load(at[a][b] + c0);
      for (int b = 0; b < 4; ++b) {  // r = B^T d
        r[0][b] = Subtract(d[0][b], d[2][b]);
        r[1][b] = Add(d[1][b], d[2][b]);
        r[2][b] = Subtract(d[2][b], d[1][b]);
        r[3][b] = Subtract(d[1][b], d[3][b]);
      }
      for (int a = 0; a < 4; ++a) {  // r B
        float* out = v + (a * 4 * rows + t - t0) * s.c + c0;
        Store(out, Subtract(r[a][0], r[a][2]));
        Store(out + step, Add(r[a][1], r[a][2]));
        Store(out + 2 * step, Subtract(r[a][2], r[a][1]));
        Store(out + 3 * step, Subtract(r[a][1], r[a][3]));
      }
    }
  }
}

// y's blocks [t0, t1) from m[e, t - t0, o]: A^T m A, with
//   A^T = [[1, 1, 1, 0], [0, 1, -1, -1]],
// cut to the image where oh or ow is odd.
CIFAR_JAX_VECTOR_CODE void TransformOutput(const Shape& s, const Blocks& blocks,
                                          const float* m, int64_t t0,
                                          int64_t t1, float* y) {
  const int64_t rows = t1 - t0;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / blocks.per_image(), rest = t % blocks.per_image();
    const int64_t ty = rest / blocks.tiles_w, tx = rest % blocks.tiles_w;
    const int height = static_cast<int>(std::min<int64_t>(2, s.oh - 2 * ty));
    const bool two_wide = 2 * tx + 1 < s.ow;
    for (int64_t o0 = 0; o0 < s.o; o0 += kLanes) {
      Vec q[2][4];
      for (int b = 0; b < 4; ++b) {  // q = A^T m
        Vec e[4];
        for (int a = 0; a < 4; ++a) e[a] = Load(m + ((a * 4 + b) * rows + t - t0) * s.o + o0);
        q[0][b] = Add(Add(e[0], e[1]), e[2]);
        q[1][b] = Subtract(Subtract(e[1], e[2]), e[3]);
      }
      for (int r = 0; r < height; ++r) {  // q A
        float* out = y + ((n * s.oh + 2 * ty + r) * s.ow + 2 * tx) * s.o + o0;
        Store(out, Add(Add(q[r][0], q[r][1]), q[r][2]));
        if (two_wide) Store(out + s.o, Subtract(Subtract(q[r][1], q[r][2]), q[r][3]));
      }
    }
  }
}

// out[p, :] = sum over d of a(p, d) * b[d, :], plus out[p, :] unless
// `first`, for P rows of a and V vectors of the columns of b and out (rows
// of `width`): the register tile of Winograd's 16 products, as
// ForwardTile's. a(p, d) is a[p * stride + d] for the forward pass's
// products (over channels d), and a[d * stride + p] where kTransposed, for
// the kernel gradient's (over blocks d).
template <int P, int V, bool kTransposed>
CIFAR_JAX_VECTOR_CODE void ProductTile(const float* a, int64_t stride,
                                      const float* b, float* out, int64_t depth,
                                      int64_t width, bool first) {
  Vec acc[P][V];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v)
      acc[p][v] = first ? Zero() : Load(out + p * width + kLanes * v);
  for (int64_t d = 0; d < depth; ++d) {
    Vec bv[V];
    for (int v = 0; v < V; ++v) bv[v] = Load(b + d * width + kLanes * v);
    for (int p = 0; p < P; ++p) {
      const Vec ab = Broadcast(kTransposed ? a[d * stride + p] : a[p * stride + d]);
      for (int v = 0; v < V; ++v) acc[p][v] = MultiplyAdd(ab, bv[v], acc[p][v]);
    }
  }
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) Store(out + p * width + kLanes * v, acc[p][v]);
}

// Blocks [t0, t1) of y: their input transform into `v`, the 16 products
// with the transformed kernel `u` into `m`, and m's transform into y. The
// products' tiles are `width` vectors wide (ForwardBlockWidth).
void WinogradChunk(const Shape& s, const Blocks& blocks, int width,
                   const float* x, const float* u, const float* zeros,
                   int64_t t0, int64_t t1, float* v, float* m, float* y) {
  const int64_t rows = t1 - t0;
  TransformInput(s, blocks, x, zeros, t0, t1, v);
  for (int e = 0; e < 16; ++e) {
    const float* a = v + e * rows * s.c;
    const float* b = u + e * s.c * s.o;
    float* out = m + e * rows * s.o;
    ChannelBlocks(s.o, width, [&](int64_t o0, auto w) {
      constexpr int V = decltype(w)::value, kRows = kAccumulators / V;
      EqualParts(rows, kRows, [&](int64_t r0, int height) {
        WithConstant<kRows>(height, [&](auto p) {
          ProductTile<decltype(p)::value, V, false>(
              a + r0 * s.c, s.c, b + o0, out + r0 * s.o + o0, s.c, s.o, true);
        });
      });
    });
  }
  TransformOutput(s, blocks, m, t0, t1, y);
}

// The kernel gradient by F(3x3, 2x2), Winograd's algorithm with the roles
// turned: the output gradient g, cut into 2x2 blocks, is the filter, and
// each block's 3x3 correlation with the 4x4 patch of the input under it is
// that block's share of dk. Summed over blocks before the last transform:
//
//   dk[:, :, c, o] = A^T [ sum over blocks of (B^T d B)[c] * (H g H^T)[o] ] A
//
// with B^T as above, H = [[1, 0], [1, 1], [1, -1], [0, -1]] and
// A^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]]: 16 multiply-
// adds per 4 positions and channel pair where the direct sum takes 36.

// w[e, t - t0, o] for the blocks t in [t0, t1) of g: (H b H^T)[a, b] of its
// 2x2 block b, zero past the image's edge (`zeros`: O zeros).
CIFAR_JAX_VECTOR_CODE void TransformGrad(const Shape& s, const Blocks& blocks,
                                        const float* g, const float* zeros,
                                        int64_t t0, int64_t t1, float* w) {
  const int64_t rows = t1 - t0, step = rows * s.o;
  const Vec zero = Zero();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / blocks.per_image(), rest = t % blocks.per_image();
    const int64_t ty = rest / blocks.tiles_w, tx = rest % blocks.tiles_w;
    const float* at[2][2];
    for (int a = 0; a < 2; ++a) {
      for (int b = 0; b < 2; ++b) {
        const int64_t row = 2 * ty + a, col = 2 * tx + b;
        at[a][b] = row < s.oh && col < s.ow
                       ? g + ((n * s.oh + row) * s.ow + col) * s.o
                       : zeros;
      }
    }
    for (int64_t o0 = 0; o0 < s.o; o0 += kLanes) {
      Vec r[4][2];
      for (int b = 0; b < 2; ++b) {  // r = H block
        const Vec top = Load(at[0][b] + o0), bottom = Load(at[1][b] + o0);
        r[0][b] = top;
        r[1][b] = Add(top, bottom);
        r[2][b] = Subtract(top, bottom);
        r[3][b] = Subtract(zero, bottom);
      }
      for (int a = 0; a < 4; ++a) {  // r H^T
        float* out = w + (a * 4 * rows + t - t0) * s.o + o0;
        Store(out, r[a][0]);
        Store(out + step, Add(r[a][0], r[a][1]));
        Store(out + 2 * step, Subtract(r[a][0], r[a][1]));
        Store(out + 3 * step, Subtract(zero, r[a][1]));
      }
    }
  }
}

// part[e, c, o] = sum over blocks [t0, t1) of v[e, t, c] * w[e, t, o], a
// chunk at a time; `v` and `w` hold one chunk's transforms.
void WinogradGroup(const Shape& s, const Blocks& blocks, const float* x,
                   const float* g, const float* zeros, int64_t t0, int64_t t1,
                   float* v, float* w, float* part) {
  const int64_t chunk = ChunkBlocks(s);
  for (int64_t start = t0; start < t1; start += chunk) {
    const int64_t end = std::min(t1, start + chunk), rows = end - start;
    const bool first = start == t0;
    TransformInput(s, blocks, x, zeros, start, end, v);
    TransformGrad(s, blocks, g, zeros, start, end, w);
    for (int e = 0; e < 16; ++e) {
      const float* a = v + e * rows * s.c;
      const float* b = w + e * rows * s.o;
      float* out = part + e * s.c * s.o;
      ChannelBlocks(s.o, kMaxBlocks, [&](int64_t o0, auto width) {
        constexpr int V = decltype(width)::value, kRows = kAccumulators / V;
        EqualParts(s.c, kRows, [&](int64_t c0, int height) {
          WithConstant<kRows>(height, [&](auto r) {
            ProductTile<decltype(r)::value, V, true>(
                a + c0, s.c, b + o0, out + c0 * s.o + o0, rows, s.o, first);
          });
        });
      });
    }
  }
}

// dk from the summed products m[e, c, o]: A^T m A.
CIFAR_JAX_VECTOR_CODE void TransformKernelGrad(const Shape& s, const float* m,
                                              float* dk) {
  for (int64_t c = 0; c < s.c; ++c) {
    for (int64_t o0 = 0; o0 < s.o; o0 += kLanes) {
      Vec q[3][4];
      for (int b = 0; b < 4; ++b) {  // q = A^T m
        Vec e[4];
        for (int a = 0; a < 4; ++a) e[a] = Load(m + ((a * 4 + b) * s.c + c) * s.o + o0);
        const Vec middle = Half(Add(e[1], e[2]));
        q[0][b] = Add(e[0], middle);
        q[1][b] = Half(Subtract(e[1], e[2]));
        q[2][b] = Add(middle, e[3]);
      }
      for (int i = 0; i < 3; ++i) {  // q A
        const Vec middle = Half(Add(q[i][1], q[i][2]));
        const Vec row[3] = {Add(q[i][0], middle), Half(Subtract(q[i][1], q[i][2])),
                            Add(middle, q[i][3])};
        for (int j = 0; j < 3; ++j) Store(dk + ((i * 3 + j) * s.c + c) * s.o + o0, row[j]);
      }
    }
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
                      int64_t pad_left, bool winograd) {
  const auto xd = x.dimensions(), gd = g.dimensions(), kd = dk->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || kd.size() != 4 || xd[0] != gd[0] ||
      kd[0] != 3 || kd[1] != 3 || kd[2] != xd[3] || kd[3] != gd[3] ||
      gd[3] % 16 != 0 || pad_top < 0 || pad_left < 0 ||
      (winograd && xd[3] % 16 != 0)) {
    return ffi::Error::InvalidArgument(
        "cifar_jax_conv3x3_kernel_grad: expects x (N, H, W, C), g (N, OH, OW, O) "
        "with O a multiple of 16 (and C too for winograd), dk (3, 3, C, O), "
        "padding >= 0");
  }
  const Shape s{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], gd[3], pad_top, pad_left};
  // Each group's partial sum: dk itself, or its 16 transformed elements.
  const size_t size = (winograd ? 16 : 9) * s.c * s.o;
  float* out = dk->typed_data();
  // Groups of whole images for the direct sum, of kGroupBlocks blocks (over
  // the whole batch) for Winograd's.
  const int64_t per_group =
      std::max<int64_t>(1, kGroupPositions / std::max<int64_t>(1, s.oh * s.ow));
  const Blocks blocks(s);
  const int64_t total = s.n * blocks.per_image();
  const int64_t groups = winograd ? (total + kGroupBlocks - 1) / kGroupBlocks
                                  : (s.n + per_group - 1) / per_group;
  if (groups == 0) {
    std::fill(out, out + 9 * s.c * s.o, 0.f);
    return ffi::Error::Success();
  }
  // Groups run in rounds whose partial sums fit in kRoundBytes, each added
  // to the total in group order: the same sum on any number of threads, in
  // memory that does not grow with the batch.
  const int64_t round = std::min<int64_t>(
      groups, std::max<int64_t>(1, kRoundBytes / (sizeof(float) * size)));
  std::unique_ptr<float[]> parts(new float[(round + 1) * size]);
  const float* xp = x.typed_data();
  const float* gp = g.typed_data();
  float* pp = parts.get();
  float* total_sum = pp + round * size;
  const int64_t chunk = winograd ? ChunkBlocks(s) : 0;
  std::unique_ptr<float[]> zeros(new float[std::max(s.c, s.o)]());
  const float* zp = zeros.get();
  for (int64_t first = 0; first < groups; first += round) {
    const int64_t count = std::min(round, groups - first);
    if (winograd) {
      ParallelFor(pool, count, [=](int64_t i) {
        const int64_t k = first + i, t0 = k * kGroupBlocks;
        const int64_t t1 = std::min(total, t0 + kGroupBlocks);
        std::unique_ptr<float[]> scratch(new float[16 * chunk * (s.c + s.o)]);
        WinogradGroup(s, blocks, xp, gp, zp, t0, t1, scratch.get(),
                      scratch.get() + 16 * chunk * s.c, pp + i * size);
      });
    } else {
      ParallelFor(pool, count, [=](int64_t i) {
        const int64_t k = first + i;
        Group(s, xp, gp, pp + i * size, k * per_group,
              std::min(s.n, (k + 1) * per_group));
      });
    }
    for (int64_t i = 0; i < count; ++i) {
      const float* part = pp + i * size;
      if (first + i == 0) {
        std::copy(part, part + size, total_sum);
      } else {
        for (size_t e = 0; e < size; ++e) total_sum[e] += part[e];
      }
    }
  }
  if (winograd) {
    TransformKernelGrad(s, total_sum, out);
  } else {
    std::copy(total_sum, total_sum + size, out);
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                   ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> y,
                   int64_t pad_top, int64_t pad_left, bool winograd) {
  const auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4 || xd[0] != yd[0] ||
      kd[0] != 3 || kd[1] != 3 || kd[2] != xd[3] || kd[3] != yd[3] ||
      yd[3] % 16 != 0 || pad_top < 0 || pad_left < 0 ||
      yd[1] + 2 < xd[1] + pad_top || yd[2] + 2 < xd[2] + pad_left ||
      (winograd && xd[3] % 16 != 0)) {
    return ffi::Error::InvalidArgument(
        "cifar_jax_conv3x3: expects x (N, H, W, C), k (3, 3, C, O) with O a "
        "multiple of 16 (and C too for winograd), y (N, OH, OW, O), padding "
        ">= 0 that fits");
  }
  const Shape s{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], pad_top, pad_left};
  const float* xp = x.typed_data();
  const float* kp = k.typed_data();
  float* yp = y->typed_data();
  if (winograd) {
    const Blocks blocks(s);
    const int64_t total = s.n * blocks.per_image(), chunk = ChunkBlocks(s);
    // The transformed kernel, then C zeros for the input outside the image.
    std::unique_ptr<float[]> u(new float[16 * s.c * s.o + s.c]());
    TransformKernel(s, kp, u.get());
    const float* up = u.get();
    const float* zeros = up + 16 * s.c * s.o;
    const int width = ForwardBlockWidth(chunk, s.o / kLanes);
    ParallelFor(pool, (total + chunk - 1) / chunk,
                [s, blocks, width, total, chunk, xp, up, zeros, yp](int64_t i) {
      const int64_t t0 = i * chunk, t1 = std::min(total, t0 + chunk);
      std::unique_ptr<float[]> scratch(new float[16 * chunk * (s.c + s.o)]);
      WinogradChunk(s, blocks, width, xp, up, zeros, t0, t1, scratch.get(),
                    scratch.get() + 16 * chunk * s.c, yp);
    });
    return ffi::Error::Success();
  }
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(CifarJaxConv3x3KernelGrad, KernelGrad,
                              Binding().Attr<bool>("winograd"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CifarJaxConv3x3, Forward,
                              Binding().Attr<bool>("winograd"));

// Whether this CPU has the instructions this build's tiles use (checked
// before registering the handlers).
extern "C" int CifarJaxCpuSupported() {
#ifdef CIFAR_JAX_AVX512
  return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
#endif
}
