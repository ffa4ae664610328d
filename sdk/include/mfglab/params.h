// Declared parameters (what a plugin accepts) and resolved parameters (what it receives).
// No LibTorch here: the engine validates experiment files against these declarations
// without creating any tensor.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace mfglab {

// The error type plugins throw for bad input or unsupported requests. The engine
// catches any std::exception at its edge and reports what() with the plugin's name.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One parameter declaration, built with the helpers below and chained bounds, e.g.
//   int_param("width", 64, "hidden units per layer").at_least(1)
struct ParamSpec {
  std::string name;
  std::string type;  // int | number | bool | string | numbers | json
  std::string default_json;
  std::string choices;  // '|'-separated, strings only
  std::string doc;
  double min = std::numeric_limits<double>::quiet_NaN();
  double max = std::numeric_limits<double>::quiet_NaN();
  bool min_exclusive = false;
  bool max_exclusive = false;

  ParamSpec& at_least(double v) { min = v; min_exclusive = false; return *this; }
  ParamSpec& above(double v) { min = v; min_exclusive = true; return *this; }
  ParamSpec& at_most(double v) { max = v; max_exclusive = false; return *this; }
  ParamSpec& below(double v) { max = v; max_exclusive = true; return *this; }
  ParamSpec& range(double lo, double hi) { return at_least(lo).at_most(hi); }
};

// A declaration that remembers the type of its value: Params reads it back by the same
// handle (params[kWidth] is an int64_t), so a name is written once. Usable wherever a
// ParamSpec is (MFGLAB_PLUGIN's list).
//   const auto kWidth = mfglab::int_param("width", 64, "hidden units per layer").at_least(1);
//   MFGLAB_PLUGIN(..., kWidth, ...);  and in the constructor:  width_ = params[kWidth];
template <class T>
struct Param : ParamSpec {
  using value_type = T;
  explicit Param(ParamSpec spec) : ParamSpec(std::move(spec)) {}
  Param& at_least(double v) { ParamSpec::at_least(v); return *this; }
  Param& above(double v) { ParamSpec::above(v); return *this; }
  Param& at_most(double v) { ParamSpec::at_most(v); return *this; }
  Param& below(double v) { ParamSpec::below(v); return *this; }
  Param& range(double lo, double hi) { ParamSpec::range(lo, hi); return *this; }
};

inline Param<int64_t> int_param(std::string name, int64_t def, std::string doc) {
  return Param<int64_t>({std::move(name), "int", nlohmann::json(def).dump(), "", std::move(doc)});
}
inline Param<double> number_param(std::string name, double def, std::string doc) {
  return Param<double>({std::move(name), "number", nlohmann::json(def).dump(), "", std::move(doc)});
}
inline Param<bool> bool_param(std::string name, bool def, std::string doc) {
  return Param<bool>({std::move(name), "bool", nlohmann::json(def).dump(), "", std::move(doc)});
}
inline Param<std::string> string_param(std::string name, std::string def, std::string doc) {
  return Param<std::string>({std::move(name), "string", nlohmann::json(def).dump(), "", std::move(doc)});
}
// A string restricted to the '|'-separated choices (read back as a string; see Choices for
// choices tied to an enum).
inline Param<std::string> choice_param(std::string name, std::string def, std::string choices, std::string doc) {
  return Param<std::string>({std::move(name), "string", nlohmann::json(def).dump(), std::move(choices), std::move(doc)});
}
// A number or a list of numbers; read back as a list.
inline Param<std::vector<double>> numbers_param(std::string name, std::vector<double> def, std::string doc) {
  return Param<std::vector<double>>({std::move(name), "numbers", nlohmann::json(def).dump(), "", std::move(doc)});
}
// Any JSON value; the plugin checks it itself and throws mfglab::Error when it is wrong.
inline Param<nlohmann::json> json_param(std::string name, const nlohmann::json& def, std::string doc) {
  return Param<nlohmann::json>({std::move(name), "json", def.dump(), "", std::move(doc)});
}

// The names of an enum's values, in one table that both declares a choice parameter and maps
// the chosen name back, so that the list of choices and the dispatch cannot drift apart.
//   enum class Sampler { em, pc, ode };
//   const mfglab::Choices<Sampler> kSamplers{{"em", Sampler::em}, {"pc", Sampler::pc}, {"ode", Sampler::ode}};
//   const auto kSampler = mfglab::choice_param("sampler", Sampler::em, kSamplers, "how to sample");
//   sampler_ = params[kSampler];
template <class E>
class Choices {
 public:
  Choices(std::initializer_list<std::pair<const char*, E>> table) {
    for (const auto& [name, value] : table) table_.emplace_back(name, value);
  }
  // "a|b|c", as a manifest lists choices.
  std::string joined() const {
    std::string out;
    for (const auto& entry : table_) out += (out.empty() ? "" : "|") + entry.first;
    return out;
  }
  const std::string& name(E value) const {
    for (const auto& entry : table_)
      if (entry.second == value) return entry.first;
    throw Error("a value without a name in its choice table");
  }
  // The same table without some values (a plugin that supports fewer).
  Choices without(std::initializer_list<E> dropped) const {
    Choices out{};
    for (const auto& entry : table_)
      if (std::find(dropped.begin(), dropped.end(), entry.second) == dropped.end()) out.table_.push_back(entry);
    return out;
  }
  // The value named `name`; `what` names the parameter in the error.
  E value(const std::string& name, const std::string& what = "value") const {
    for (const auto& entry : table_)
      if (entry.first == name) return entry.second;
    throw Error("unknown " + what + " '" + name + "' (expected " + joined() + ")");
  }

 private:
  std::vector<std::pair<std::string, E>> table_;
};

template <class E>
struct ChoiceParam : ParamSpec {
  using value_type = E;
  ChoiceParam(ParamSpec spec, Choices<E> table) : ParamSpec(std::move(spec)), choices(std::move(table)) {}
  Choices<E> choices;
};

template <class E>
ChoiceParam<E> choice_param(std::string name, E def, const Choices<E>& choices, std::string doc) {
  return ChoiceParam<E>({std::move(name), "string", nlohmann::json(choices.name(def)).dump(), choices.joined(), std::move(doc)},
                        choices);
}

// Resolved parameters handed to a plugin's constructor: every declared parameter is
// present (defaults filled in) and has been checked against its declaration.
class Params {
 public:
  Params() : json_(nlohmann::json::object()) {}
  explicit Params(nlohmann::json j) : json_(std::move(j)) {}
  static Params parse(const char* text) { return Params(nlohmann::json::parse(text)); }

  bool has(const std::string& key) const { return json_.contains(key); }
  const nlohmann::json& raw(const std::string& key) const { return at(key); }
  const nlohmann::json& json() const { return json_; }

  int64_t integer(const std::string& key) const { return at(key).get<int64_t>(); }
  double number(const std::string& key) const { return at(key).get<double>(); }
  bool flag(const std::string& key) const { return at(key).get<bool>(); }
  std::string string(const std::string& key) const { return at(key).get<std::string>(); }
  std::vector<double> numbers(const std::string& key) const {
    const auto& v = at(key);
    if (v.is_number()) return {v.get<double>()};
    return v.get<std::vector<double>>();
  }

  // By handle: the value in the type its declaration gives.
  template <class T>
  T operator[](const Param<T>& p) const {
    if constexpr (std::is_same_v<T, std::vector<double>>) return numbers(p.name);
    else if constexpr (std::is_same_v<T, nlohmann::json>) return at(p.name);
    else return at(p.name).template get<T>();
  }
  template <class E>
  E operator[](const ChoiceParam<E>& p) const {
    return p.choices.value(string(p.name), "value of '" + p.name + "'");
  }

 private:
  const nlohmann::json& at(const std::string& key) const {
    auto it = json_.find(key);
    if (it == json_.end()) throw Error("parameter '" + key + "' is not declared by this plugin");
    return *it;
  }
  nlohmann::json json_;
};

}  // namespace mfglab
