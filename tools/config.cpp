#include "tools/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <set>
#include <sstream>

#include "core/error.h"

namespace kiln {

std::string type_name(ConfigType t) {
  switch (t) {
    case ConfigType::Int: return "int";
    case ConfigType::Float: return "float";
    case ConfigType::Bool: return "bool";
    case ConfigType::String: return "string";
    case ConfigType::IntList: return "list of int";
  }
  return "?";
}

const ConfigKey* find_config_key(const std::string& path) {
  for (const ConfigKey& k : config_schema())
    if (k.path == path) return &k;
  return nullptr;
}

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  const auto e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

int64_t parse_int(const std::string& text, const std::string& what) {
  int64_t v = 0;
  const std::string t = trim(text);
  auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  KILN_CHECK(ec == std::errc() && end == t.data() + t.size() && !t.empty(), what,
             ": expected an int, got '", text, "'");
  return v;
}

// The shortest text that reads back as the same double: 0.0003, not 0.00029999999999999997.
std::string shortest(double v) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, end);
  // Keep it a float to YAML readers: "1" -> "1.0" ("1e-08" already is one).
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& i : items) s += (s.empty() ? "" : ", ") + i;
  return s;
}

}  // namespace

std::string nearest_config_key(const std::string& path) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const ConfigKey& k : config_schema()) {
    // Compare against the whole path and, for a wrong section, against the leaf name alone.
    const std::string leaf = k.path.substr(k.path.rfind('.') + 1);
    const std::string given_leaf = path.substr(path.rfind('.') + 1);
    const size_t d = std::min(edit_distance(path, k.path), edit_distance(given_leaf, leaf) + 2);
    if (d < best_d) best_d = d, best = k.path;
  }
  return best;
}

ConfigValue parse_config_value(const ConfigKey& key, const std::string& text, const std::string& where) {
  const std::string what = where + ": " + key.path;
  ConfigValue value;
  switch (key.type) {
    case ConfigType::Int:
      value = parse_int(text, what);
      break;
    case ConfigType::Float: {
      const std::string t = trim(text);
      char* end = nullptr;
      const double v = std::strtod(t.c_str(), &end);
      KILN_CHECK(!t.empty() && end == t.c_str() + t.size() && std::isfinite(v), what,
                 ": expected a float, got '", text, "'");
      value = v;
      break;
    }
    case ConfigType::Bool: {
      std::string t = trim(text);
      std::transform(t.begin(), t.end(), t.begin(), ::tolower);
      if (t == "true" || t == "yes" || t == "on" || t == "1") value = true;
      else if (t == "false" || t == "no" || t == "off" || t == "0") value = false;
      else KILN_FAIL(what, ": expected true or false, got '", text, "'");
      break;
    }
    case ConfigType::String:
      value = trim(text);
      break;
    case ConfigType::IntList: {
      std::string t = trim(text);
      if (!t.empty() && t.front() == '[' && t.back() == ']') t = t.substr(1, t.size() - 2);
      std::vector<int64_t> list;
      std::stringstream ss(t);
      for (std::string item; std::getline(ss, item, ',');)
        if (!trim(item).empty()) list.push_back(parse_int(item, what));
      value = list;
      break;
    }
  }
  // Ranges and choices.
  if (const auto* i = std::get_if<int64_t>(&value)) {
    KILN_CHECK(!key.min || *i >= *key.min, what, ": ", *i, " is below the minimum ", *key.min);
    KILN_CHECK(!key.max || *i <= *key.max, what, ": ", *i, " is above the maximum ", *key.max);
  } else if (const auto* f = std::get_if<double>(&value)) {
    KILN_CHECK(!key.min || *f >= *key.min, what, ": ", *f, " is below the minimum ", *key.min);
    KILN_CHECK(!key.max || *f <= *key.max, what, ": ", *f, " is above the maximum ", *key.max);
  } else if (const auto* l = std::get_if<std::vector<int64_t>>(&value)) {
    for (int64_t v : *l) KILN_CHECK(!key.min || v >= *key.min, what, ": ", v, " is below the minimum ", *key.min);
  } else if (const auto* s = std::get_if<std::string>(&value); s && !key.choices.empty()) {
    KILN_CHECK(std::find(key.choices.begin(), key.choices.end(), *s) != key.choices.end(), what,
               ": '", *s, "' is not one of: ", join(key.choices));
  }
  return value;
}

std::string config_schema_markdown() {
  std::ostringstream os;
  os << "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (const ConfigKey& k : config_schema()) {
    std::string def;
    if (const auto* i = std::get_if<int64_t>(&k.default_value)) def = std::to_string(*i);
    else if (const auto* f = std::get_if<double>(&k.default_value)) { std::ostringstream d; d << *f; def = d.str(); }
    else if (const auto* b = std::get_if<bool>(&k.default_value)) def = *b ? "true" : "false";
    else if (const auto* s = std::get_if<std::string>(&k.default_value)) def = s->empty() ? "\"\"" : *s;
    else {
      for (int64_t v : std::get<std::vector<int64_t>>(k.default_value)) def += (def.empty() ? "" : ", ") + std::to_string(v);
      def = "[" + def + "]";
    }
    std::string meaning = k.help;
    if (!k.choices.empty()) meaning += " (one of: " + join(k.choices) + ")";
    if (k.min || k.max) {
      std::ostringstream r;
      if (k.min) r << " (min " << *k.min;
      if (k.max) r << (k.min ? ", max " : " (max ") << *k.max;
      meaning += r.str() + ")";
    }
    os << "| `" << k.path << "` | " << type_name(k.type) << " | `" << def << "` | " << meaning << " |\n";
  }
  return os.str();
}

Config::Config() {
  for (const ConfigKey& k : config_schema()) values_[k.path] = k.default_value;
}

void Config::set(const ConfigKey& key, ConfigValue value, const std::string& origin) {
  values_[key.path] = std::move(value);
  origins_[key.path] = origin;
}

namespace {

void load_node(Config& cfg, const YAML::Node& node, const std::string& prefix, const std::string& file,
               const std::function<void(const ConfigKey&, ConfigValue, const std::string&)>& set) {
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    // Copies: yaml-cpp's iterator hands out a temporary pair, so references would dangle.
    const YAML::Node key_node = it->first;
    const YAML::Node value = it->second;
    const std::string name = key_node.as<std::string>();
    const std::string path = prefix.empty() ? name : prefix + "." + name;
    const std::string where = file + ":" + std::to_string(key_node.Mark().line + 1);
    KILN_CHECK(seen.insert(name).second, where, ": duplicate key '", path, "'");
    if (value.IsMap()) {
      load_node(cfg, value, path, file, set);
      continue;
    }
    const ConfigKey* key = find_config_key(path);
    KILN_CHECK(key, where, ": unknown key '", path, "' (did you mean '", nearest_config_key(path), "'?)");
    std::string text;
    if (value.IsSequence()) {
      KILN_CHECK(key->type == ConfigType::IntList, where, ": ", path, ": expected ",
                 type_name(key->type), ", got a list");
      for (const auto& item : value) {
        KILN_CHECK(item.IsScalar(), where, ": ", path, ": list items must be scalars");
        text += (text.empty() ? "" : ",") + item.Scalar();
      }
    } else if (value.IsScalar()) {
      text = value.Scalar();
    } else {
      KILN_CHECK(key->type == ConfigType::String, where, ": ", path, ": missing value");
    }
    set(*key, parse_config_value(*key, text, where), where);
  }
}

}  // namespace

Config Config::load(const std::string& file) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(file);
  } catch (const YAML::BadFile&) {
    KILN_FAIL("cannot read config file ", file);
  } catch (const YAML::ParserException& e) {
    KILN_FAIL(file, ":", e.mark.line + 1, ": YAML syntax error: ", e.msg);
  }
  Config cfg;
  cfg.source_ = file;
  if (root.IsNull()) return cfg;
  KILN_CHECK(root.IsMap(), file, ": expected a mapping of sections at the top level");
  load_node(cfg, root, "", file, [&](const ConfigKey& k, ConfigValue v, const std::string& where) {
    cfg.set(k, std::move(v), where);
  });
  return cfg;
}

void Config::set_override(const std::string& assignment, const std::string& origin) {
  const auto eq = assignment.find('=');
  KILN_CHECK(eq != std::string::npos && eq > 0, origin, ": override '", assignment,
             "' is not of the form key=value (e.g. optim.lr=3e-4)");
  const std::string path = trim(assignment.substr(0, eq));
  const ConfigKey* key = find_config_key(path);
  KILN_CHECK(key, origin, ": unknown key '", path, "' (did you mean '", nearest_config_key(path), "'?)");
  set(*key, parse_config_value(*key, assignment.substr(eq + 1), origin), origin);
}

const ConfigValue& Config::get(const std::string& path, ConfigType type) const {
  const ConfigKey* key = find_config_key(path);
  KILN_CHECK(key, "config: no key '", path, "' in the schema");
  KILN_CHECK(key->type == type, "config: ", path, " is a ", type_name(key->type), ", read as ", type_name(type));
  return values_.at(path);
}

int64_t Config::get_int(const std::string& p) const { return std::get<int64_t>(get(p, ConfigType::Int)); }
double Config::get_float(const std::string& p) const { return std::get<double>(get(p, ConfigType::Float)); }
bool Config::get_bool(const std::string& p) const { return std::get<bool>(get(p, ConfigType::Bool)); }
const std::string& Config::get_string(const std::string& p) const {
  return std::get<std::string>(get(p, ConfigType::String));
}
const std::vector<int64_t>& Config::get_int_list(const std::string& p) const {
  return std::get<std::vector<int64_t>>(get(p, ConfigType::IntList));
}
bool Config::is_set(const std::string& path) const { return origins_.count(path) > 0; }

std::string Config::to_yaml() const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::vector<std::string> open;  // sections currently open
  for (const ConfigKey& k : config_schema()) {
    std::vector<std::string> parts;
    std::stringstream ss(k.path);
    for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
    const std::vector<std::string> sections(parts.begin(), parts.end() - 1);
    size_t common = 0;
    while (common < open.size() && common < sections.size() && open[common] == sections[common]) ++common;
    while (open.size() > common) { out << YAML::EndMap; open.pop_back(); }
    for (size_t i = common; i < sections.size(); ++i) {
      out << YAML::Key << sections[i] << YAML::Value << YAML::BeginMap;
      open.push_back(sections[i]);
    }
    out << YAML::Key << parts.back() << YAML::Value;
    const ConfigValue& v = values_.at(k.path);
    if (const auto* i = std::get_if<int64_t>(&v)) out << *i;
    else if (const auto* f = std::get_if<double>(&v)) out << shortest(*f);
    else if (const auto* b = std::get_if<bool>(&v)) out << *b;
    else if (const auto* s = std::get_if<std::string>(&v)) out << *s;
    else out << YAML::Flow << std::get<std::vector<int64_t>>(v);
  }
  while (!open.empty()) { out << YAML::EndMap; open.pop_back(); }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace kiln
