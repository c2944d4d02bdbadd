#include "data/image_transform.h"

#include <array>
#include <cmath>

#include "core/error.h"
#include "core/philox.h"
#include "data/random_streams.h"

namespace kiln {

void ImageTransform::validate(const Shape& chw) const {
  KILN_CHECK(chw.size() == 3, "transform: samples must be [C, H, W], got ", shape_str(chw));
  const auto channels = static_cast<std::size_t>(chw[0]);
  KILN_CHECK(mean.size() == 1 || mean.size() == channels, "transform: normalize mean has ", mean.size(),
             " values for ", channels, " channels (give 1 or ", channels, ")");
  KILN_CHECK(std.size() == 1 || std.size() == channels, "transform: normalize std has ", std.size(),
             " values for ", channels, " channels (give 1 or ", channels, ")");
  for (double s : std)
    KILN_CHECK(std::isfinite(s) && s > 0, "transform: normalize std must be positive and finite, got ", s);
  for (double m : mean) KILN_CHECK(std::isfinite(m), "transform: normalize mean must be finite, got ", m);
  KILN_CHECK(crop_padding >= 0, "transform: crop padding must be >= 0, got ", crop_padding);
}

AugmentChoice augment_choice(const ImageTransform& t, uint64_t seed, int64_t epoch, int64_t index) {
  AugmentChoice a{t.crop_padding, t.crop_padding, false};
  if (!t.is_random()) return a;
  const uint64_t offset = data_streams::offset(static_cast<uint64_t>(epoch), data_streams::kAugment);
  const uint64_t base = static_cast<uint64_t>(index) * 4;  // one Philox block per sample
  if (t.crop_padding > 0) {
    a.dy = uniform_int(seed, offset, base + 0, 0, 2 * t.crop_padding + 1);
    a.dx = uniform_int(seed, offset, base + 1, 0, 2 * t.crop_padding + 1);
  }
  if (t.horizontal_flip) a.flip = uniform_int(seed, offset, base + 2, 0, 2) == 1;
  return a;
}

void apply_transform(const ImageTransform& t, const Shape& chw, const uint8_t* src, const AugmentChoice& a,
                     float* dst) {
  const int64_t C = chw[0], H = chw[1], W = chw[2];
  const int64_t pad = t.crop_padding;
  for (int64_t c = 0; c < C; ++c) {
    // A table of the 256 possible outputs: exact to one rounding, and cheaper than the division.
    const double m = t.mean.size() == 1 ? t.mean[0] : t.mean[c];
    const double s = t.std.size() == 1 ? t.std[0] : t.std[c];
    std::array<float, 256> lut;
    for (int v = 0; v < 256; ++v) lut[v] = static_cast<float>((v / 255.0 - m) / s);

    const uint8_t* plane = src + c * H * W;
    float* out = dst + c * H * W;
    for (int64_t y = 0; y < H; ++y) {
      const int64_t sy = y + a.dy - pad;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t sx = (a.flip ? W - 1 - x : x) + a.dx - pad;
        const bool inside = sy >= 0 && sy < H && sx >= 0 && sx < W;
        out[y * W + x] = lut[inside ? plane[sy * W + sx] : 0];
      }
    }
  }
}

}  // namespace kiln
