// Run configuration: a YAML file plus dotted command-line overrides, checked against one
// schema (tools/config_schema.cpp) that also documents every key. Errors name the file, the
// line and the key path; an unknown key suggests the nearest valid one.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace kiln {

enum class ConfigType { Int, Float, Bool, String, IntList };

using ConfigValue = std::variant<int64_t, double, bool, std::string, std::vector<int64_t>>;

struct ConfigKey {
  std::string path;  // "optim.lr"
  ConfigType type;
  ConfigValue default_value;
  std::string help;
  std::optional<double> min, max;       // numeric range, inclusive
  std::vector<std::string> choices;     // allowed strings, when listed
};

// The schema: every key kiln's runner understands, in documentation order.
const std::vector<ConfigKey>& config_schema();
const ConfigKey* find_config_key(const std::string& path);
std::string type_name(ConfigType t);

class Config {
 public:
  // Defaults for every key.
  Config();
  // Reads `file` over the defaults; throws kiln::Error naming file:line and the key.
  static Config load(const std::string& file);
  // Applies "a.b=value" (typed by the schema); `origin` names it in errors.
  void set_override(const std::string& assignment, const std::string& origin = "command line");

  int64_t get_int(const std::string& path) const;
  double get_float(const std::string& path) const;
  bool get_bool(const std::string& path) const;
  const std::string& get_string(const std::string& path) const;
  const std::vector<int64_t>& get_int_list(const std::string& path) const;
  bool is_set(const std::string& path) const;  // given by the file or an override

  // YAML text of the merged config, with sections; loads back to the same config.
  std::string to_yaml() const;
  const std::string& source() const { return source_; }

 private:
  void set(const ConfigKey& key, ConfigValue value, const std::string& origin);
  const ConfigValue& get(const std::string& path, ConfigType type) const;

  std::map<std::string, ConfigValue> values_;
  std::map<std::string, std::string> origins_;  // key -> where it was set
  std::string source_ = "defaults";
};

// Parses a scalar written in YAML or on a command line as `type`; `where` names it in errors.
ConfigValue parse_config_value(const ConfigKey& key, const std::string& text, const std::string& where);
// Markdown table of every key (key, type, default, meaning): docs/configs.md embeds it, and a
// test keeps the two identical.
std::string config_schema_markdown();
// The valid key closest to `path` by edit distance, for "did you mean" hints.
std::string nearest_config_key(const std::string& path);

}  // namespace kiln
