// Files of a run directory: atomic writes, numpy .npy arrays, CSV sample files.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace at { class Tensor; }

namespace mfglab::engine {

// Writes `content` to `path` through a temporary file in the same folder and a rename,
// so that readers see either the old file or the complete new one.
void write_file_atomic(const std::string& path, const std::string& content);
void write_json_atomic(const std::string& path, const nlohmann::json& j);
nlohmann::json read_json_file(const std::string& path);

// numpy format 1.0, little-endian, C order; float32 or float64 (other types become
// float64), any rank >= 1.
std::string npy_bytes(const at::Tensor& t);
void save_npy(const std::string& path, const at::Tensor& t);
// Loads a float32/float64 .npy array of any rank as a float64 tensor.
at::Tensor load_npy_array(const std::string& path);
// Same for sample files: shape N x d (1-D is N x 1).
at::Tensor load_npy(const std::string& path);
// Loads a CSV of numbers (a header line is skipped when it is not numeric) as float64 N x d.
at::Tensor load_csv(const std::string& path);
// By extension: .npy or .csv/.txt.
at::Tensor load_samples(const std::string& path);

}  // namespace mfglab::engine
