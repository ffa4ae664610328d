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
// The readers below follow the rules of <mfglab/array_io.h> (the file dataset uses the same):
// regular files only, every size checked against the file before anything is allocated,
// errors naming the file (and the line of a CSV file).
// Loads a float32/float64 .npy array of any rank >= 1 as a float64 tensor (NaN and Inf kept).
at::Tensor load_npy_array(const std::string& path);
// Same for sample files: shape N x d (1-D is N x 1).
at::Tensor load_npy(const std::string& path);
// Loads a CSV of finite numbers as float64 N x d; the first line is skipped as a header
// when none of its cells is a number.
at::Tensor load_csv(const std::string& path);
// By extension: .npy or .csv/.txt; refuses NaN and Inf.
at::Tensor load_samples(const std::string& path);

}  // namespace mfglab::engine
