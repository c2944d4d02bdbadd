// Every key the runner understands: type, default, meaning. docs/configs.md is checked against
// this list by tests/test_config.cpp, so the two cannot drift apart.
#include "tools/config.h"

namespace kiln {

namespace {
using V = std::vector<int64_t>;
ConfigKey key(std::string path, ConfigType type, ConfigValue def, std::string help,
              std::optional<double> min = std::nullopt, std::optional<double> max = std::nullopt,
              std::vector<std::string> choices = {}) {
  return {std::move(path), type, std::move(def), std::move(help), min, max, std::move(choices)};
}
constexpr auto I = ConfigType::Int;
constexpr auto F = ConfigType::Float;
constexpr auto B = ConfigType::Bool;
constexpr auto S = ConfigType::String;
constexpr auto L = ConfigType::IntList;
}  // namespace

const std::vector<ConfigKey>& config_schema() {
  static const std::vector<ConfigKey> schema = {
      key("model.name", S, std::string("mlp"), "model to train: mlp, lenet, resnet_small or gpt"),
      key("model.hidden_sizes", L, V{512, 512}, "mlp: widths of the hidden layers", 1),
      key("model.activation", S, std::string("relu"), "mlp: activation between layers",
          {}, {}, {"relu", "gelu"}),
      key("model.dropout", F, 0.0, "mlp: dropout probability after each hidden activation", 0.0, 0.99),
      key("model.num_classes", I, int64_t{10}, "number of output classes", 2),
      key("model.channels", L, V{32, 64, 128}, "resnet_small: channels of each stage", 1),
      key("model.blocks_per_stage", I, int64_t{2}, "resnet_small: residual blocks per stage", 1, 16),
      key("model.preset", S, std::string(""),
          "gpt: size preset (gpt2-124M, gpt2-medium, gpt2-large, gpt2-xl, gpt2-mini, gpt-char-tiny); empty: give every size"),
      key("model.n_layer", I, int64_t{0}, "gpt: transformer blocks; 0: the preset's", 0),
      key("model.n_head", I, int64_t{0}, "gpt: attention heads; 0: the preset's", 0),
      key("model.n_embd", I, int64_t{0}, "gpt: width of the residual stream; 0: the preset's", 0),
      key("model.block_size", I, int64_t{0}, "gpt: longest sequence (position embeddings); 0: the preset's", 0),
      key("model.vocab_size", I, int64_t{0}, "gpt: vocabulary size; 0: the preset's", 0),
      key("model.padded_vocab_size", I, int64_t{0},
          "gpt: rows of the token embedding; 0: vocab_size rounded up to a multiple of 128 (llm.c)", 0),
      key("model.attention", S, std::string("naive"), "gpt: attention backend", {}, {},
          {"naive", "flash", "batched"}),
      key("model.init_from", S, std::string(""),
          "gpt: start from a Hugging Face GPT-2 safetensors file (e.g. gpt2's model.safetensors); empty: random init"),

      key("data.dataset", S, std::string("fashion_mnist"),
          "dataset: fashion_mnist, mnist, or tokens (token shards for a gpt; see data.train_shards)"),
      key("data.dir", S, std::string(""),
          "directory with the idx files (gzip or raw); empty: the dataset's own (/usr/share/datasets/fashion-mnist)"),
      key("data.batch_size", I, int64_t{128},
          "training (micro-)batch size: rows per forward pass; a step sees batch_size * train.grad_accum_steps", 1),
      key("data.eval_batch_size", I, int64_t{1000}, "evaluation batch size (images; token runs use data.batch_size)", 1),
      key("data.shuffle", B, true, "reshuffle the training set every epoch"),
      key("data.drop_last", B, true, "drop the last incomplete training batch of an epoch"),
      key("data.mean", F, 0.2860, "normalisation mean (Fashion-MNIST's pixel mean)"),
      key("data.std", F, 0.3530, "normalisation std (Fashion-MNIST's pixel std)", 1e-6),
      key("data.random_crop_padding", I, int64_t{0}, "pad by this much and crop back at random; 0: off", 0, 16),
      key("data.horizontal_flip", B, false, "flip training images left-right with probability 1/2"),
      key("data.prefetch", I, int64_t{2}, "batches prepared ahead by a background thread; 0: none", 0, 64),
      key("data.train_shards", S, std::string(""),
          "tokens: training shards (llm.c format), paths or glob patterns separated by commas, e.g. data/kjv/char/train_*.bin"),
      key("data.val_shards", S, std::string(""), "tokens: validation shards, as data.train_shards"),
      key("data.seq_len", I, int64_t{0}, "tokens: sequence length T of each row; 0: model.block_size", 0),
      key("data.tokenizer", S, std::string(""),
          "tokens: the shards' tokenizer, for kiln generate: byte, a kiln tokenizer file, or a directory with GPT-2's encoder.json and vocab.bpe"),

      key("optim.name", S, std::string("adamw"), "optimizer: sgd, adam or adamw"),
      key("optim.lr", F, 1e-3, "peak learning rate", 0.0),
      key("optim.weight_decay", F, 0.0, "weight decay (decoupled for adamw; biases and norms get none)", 0.0),
      key("optim.momentum", F, 0.9, "sgd: momentum", 0.0, 1.0),
      key("optim.nesterov", B, false, "sgd: Nesterov momentum"),
      key("optim.beta1", F, 0.9, "adam/adamw: beta1", 0.0, 1.0),
      key("optim.beta2", F, 0.999, "adam/adamw: beta2", 0.0, 1.0),
      key("optim.eps", F, 1e-8, "adam/adamw: epsilon", 0.0),
      key("optim.grad_clip", F, 0.0, "clip gradients to this global L2 norm; 0: off", 0.0),

      key("schedule.name", S, std::string("cosine"), "learning-rate schedule: constant, step, cosine or onecycle"),
      key("schedule.warmup_steps", I, int64_t{0}, "cosine: linear warmup steps", 0),
      key("schedule.min_lr", F, 0.0, "cosine: final learning rate", 0.0),
      key("schedule.step_size", I, int64_t{1000}, "step: steps between decays", 1),
      key("schedule.gamma", F, 0.1, "step: decay factor", 0.0, 1.0),
      key("schedule.pct_start", F, 0.3, "onecycle: fraction of steps spent increasing", 0.0, 1.0),

      key("train.steps", I, int64_t{2000}, "optimizer steps to train", 1),
      key("train.seed", I, int64_t{0}, "seed for initialisation, shuffling, dropout and augmentation", 0),
      key("train.eval_every", I, int64_t{500},
          "evaluate (images: the test split; tokens: eval.batches of the val shards) every N steps; 0: only at the end", 0),
      key("train.log_every", I, int64_t{50}, "print and record metrics every N steps", 1),
      key("train.label_smoothing", F, 0.0, "cross-entropy label smoothing (images)", 0.0, 1.0),
      key("train.grad_accum_steps", I, int64_t{1},
          "gradient accumulation: micro-batches of data.batch_size per optimizer step (each loss divided by this)", 1),
      key("train.precision", S, std::string("f32"),
          "f32, or autocast forward and loss in bf16 or f16 (f16 adds dynamic loss scaling); weights stay f32", {}, {},
          {"f32", "bf16", "f16"}),
      key("train.resume", S, std::string("never"),
          "never, auto (newest valid checkpoint in the run directory) or a checkpoint path"),

      key("eval.batches", I, int64_t{20},
          "tokens: validation batches (of data.batch_size rows) per evaluation; 0: the whole validation split", 0),

      key("checkpoint.every", I, int64_t{1000}, "save a checkpoint every N steps; 0: only at the end", 0),
      key("checkpoint.keep_last", I, int64_t{3}, "checkpoints to keep", 1),

      key("log.dir", S, std::string("runs"), "where run directories are created"),
      key("log.name", S, std::string(""), "run name; default: the config file's name"),
      key("log.run_dir", S, std::string(""), "exact run directory (overrides dir/name/time); resume uses it"),
      key("log.tensorboard", B, true, "write TensorBoard event files"),

      key("device", S, std::string("auto"), "auto (a GPU when visible), cpu, cuda or cuda:N"),

      key("dist.backend", S, std::string("auto"),
          "with several ranks (kiln launch): nccl, gloo, or auto (nccl on GPUs, else the launcher's --backend or gloo)",
          {}, {}, {"auto", "nccl", "gloo"}),
      key("dist.zero", I, int64_t{0}, "1: ZeRO-1, shard the optimizer state (and f32 master weights) across ranks", 0, 1),
      key("dist.bucket_mb", F, 25.0, "DDP gradient bucket size in MB (all-reduced while backward runs)", 0.001),
      key("dist.timeout_s", F, 60.0,
          "seconds to wait for the other ranks (rendezvous and each collective); KILN_DIST_TIMEOUT_S overrides", 0.1),
  };
  return schema;
}

}  // namespace kiln
