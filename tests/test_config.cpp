// The config loader: defaults, YAML, typed overrides, and the errors users see.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tests/expect_error.h"
#include "tools/config.h"

namespace kiln {
namespace {

using testing::error_of;

namespace fs = std::filesystem;

fs::path write_temp(const std::string& name, const std::string& text) {
  const fs::path dir = fs::temp_directory_path() / ("kiln_config_test_" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / name) << text;
  return dir / name;
}

TEST(Config, DefaultsCoverEverySchemaKey) {
  Config cfg;
  EXPECT_EQ(cfg.get_string("model.name"), "mlp");
  EXPECT_EQ(cfg.get_int("data.batch_size"), 128);
  EXPECT_DOUBLE_EQ(cfg.get_float("optim.lr"), 1e-3);
  EXPECT_FALSE(cfg.is_set("optim.lr"));
}

TEST(Config, LoadsYamlAndOverridesByType) {
  const fs::path f = write_temp("a.yaml", "model:\n  name: mlp\n  hidden_sizes: [64, 32]\noptim:\n  lr: 0.5\ndevice: cpu\n");
  Config cfg = Config::load(f.string());
  EXPECT_EQ(cfg.get_int_list("model.hidden_sizes"), (std::vector<int64_t>{64, 32}));
  EXPECT_DOUBLE_EQ(cfg.get_float("optim.lr"), 0.5);
  cfg.set_override("optim.lr=3e-4");
  cfg.set_override("train.steps=200");
  cfg.set_override("data.shuffle=false");
  cfg.set_override("model.hidden_sizes=[8,4,2]");
  EXPECT_DOUBLE_EQ(cfg.get_float("optim.lr"), 3e-4);
  EXPECT_EQ(cfg.get_int("train.steps"), 200);
  EXPECT_FALSE(cfg.get_bool("data.shuffle"));
  EXPECT_EQ(cfg.get_int_list("model.hidden_sizes"), (std::vector<int64_t>{8, 4, 2}));
  EXPECT_TRUE(cfg.is_set("train.steps"));
}

TEST(Config, PrintedConfigLoadsBackIdentically) {
  Config cfg;
  cfg.set_override("optim.lr=0.0123");
  cfg.set_override("model.channels=[3,5]");
  cfg.set_override("log.name=my run");
  const fs::path f = write_temp("round.yaml", cfg.to_yaml());
  Config back = Config::load(f.string());
  EXPECT_EQ(back.to_yaml(), cfg.to_yaml());
  EXPECT_DOUBLE_EQ(back.get_float("optim.lr"), 0.0123);
  EXPECT_EQ(back.get_string("log.name"), "my run");
}

TEST(Config, UnknownKeyNamesFileLineAndNearestKey) {
  const fs::path f = write_temp("typo.yaml", "optim:\n  lr: 0.1\n  weight_decy: 0.1\n");
  const std::string msg = error_of([&] { Config::load(f.string()); });
  EXPECT_NE(msg.find(f.string() + ":3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown key 'optim.weight_decy'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'optim.weight_decay'"), std::string::npos) << msg;
  // A key under the wrong section is found by its leaf name.
  EXPECT_NE(error_of([] { Config().set_override("train.lr=1"); }).find("'optim.lr'"), std::string::npos);
}

TEST(Config, WrongTypeAndRangeNameTheKey) {
  EXPECT_NE(error_of([] { Config().set_override("optim.lr=fast"); }).find("optim.lr: expected a float, got 'fast'"),
            std::string::npos);
  EXPECT_NE(error_of([] { Config().set_override("train.steps=1.5"); }).find("train.steps: expected an int"),
            std::string::npos);
  EXPECT_NE(error_of([] { Config().set_override("data.batch_size=0"); }).find("data.batch_size: 0 is below the minimum 1"),
            std::string::npos);
  EXPECT_NE(error_of([] { Config().set_override("model.activation=swish"); }).find("not one of: relu, gelu"),
            std::string::npos);
  const fs::path f = write_temp("type.yaml", "train:\n  steps: [1, 2]\n");
  EXPECT_NE(error_of([&] { Config::load(f.string()); }).find("train.steps: expected int, got a list"), std::string::npos);
}

TEST(Config, DuplicateKeyAndBadSyntaxAreErrors) {
  const fs::path dup = write_temp("dup.yaml", "optim:\n  lr: 0.1\n  lr: 0.2\n");
  EXPECT_NE(error_of([&] { Config::load(dup.string()); }).find("duplicate key 'optim.lr'"), std::string::npos);
  const fs::path bad = write_temp("bad.yaml", "optim:\n  lr: [0.1\n");
  EXPECT_NE(error_of([&] { Config::load(bad.string()); }).find("YAML syntax error"), std::string::npos);
  EXPECT_NE(error_of([] { Config::load("/nonexistent/x.yaml"); }).find("cannot read config file /nonexistent/x.yaml"),
            std::string::npos);
  EXPECT_NE(error_of([] { Config().set_override("optim.lr"); }).find("not of the form key=value"), std::string::npos);
}

// docs/configs.md embeds the schema table; regenerate it from config_schema_markdown() when
// the schema changes (this test prints the expected table).
TEST(Config, DocsListEveryKey) {
  const char* src = std::getenv("KILN_SOURCE_DIR");
  std::ifstream in(fs::path(src ? src : ".") / "docs" / "configs.md");
  ASSERT_TRUE(in.good()) << "docs/configs.md missing";
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string table = config_schema_markdown();
  EXPECT_NE(ss.str().find(table), std::string::npos) << "docs/configs.md is out of date; its table should be:\n" << table;
}

}  // namespace
}  // namespace kiln
