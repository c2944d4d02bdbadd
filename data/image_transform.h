// What the loader does to each sample between the dataset's u8 pixels and the network's f32
// input, in torchvision's order: RandomCrop(size = H x W, padding) -> RandomHorizontalFlip ->
// ToTensor (x / 255) -> Normalize(mean, std). The random choices for a sample depend only on
// (seed, epoch, dataset index) (see data/random_streams.h), so they are reproducible, the
// same whichever batch the sample lands in, and the same after a resume.
#pragma once

#include <cstdint>
#include <vector>

#include "core/shape.h"

namespace kiln {

struct ImageTransform {
  std::vector<double> mean = {0.0};  // one per channel, or one for all channels
  std::vector<double> std = {1.0};
  int64_t crop_padding = 0;          // > 0: pad with zero pixels, then crop an H x W window at random
  bool horizontal_flip = false;      // mirror left-right with probability 1/2
  bool flatten = false;              // inputs [B, C*H*W] (for an MLP) instead of [B, C, H, W]

  // Throws naming the option when it does not fit samples of shape `chw` ([C, H, W]).
  void validate(const Shape& chw) const;
  bool is_random() const { return crop_padding > 0 || horizontal_flip; }
};

// The random choices for one sample: the top-left corner of the crop in the padded image
// (each in [0, 2 * crop_padding]; crop_padding, crop_padding is the unshifted image) and
// whether to flip.
struct AugmentChoice {
  int64_t dy = 0, dx = 0;
  bool flip = false;
};

AugmentChoice augment_choice(const ImageTransform& t, uint64_t seed, int64_t epoch, int64_t index);

// Writes the transformed sample (C*H*W floats, row-major) to `dst`. Output pixel (c, y, x) is
// source pixel (c, y + dy - pad, x' + dx - pad), x' = W-1-x when flipped, or 0 where that
// falls outside the image; then (value / 255 - mean[c]) / std[c] computed in double and
// rounded once to float.
void apply_transform(const ImageTransform& t, const Shape& chw, const uint8_t* src, const AugmentChoice& a,
                     float* dst);

}  // namespace kiln
