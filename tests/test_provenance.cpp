// What made a result: `mfglab --version`, and summary.json's mfglab and LibTorch versions and
// each plugin's name, version and library SHA-256 (checked against FIPS 180-4's examples and
// coreutils' sha256sum).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli.h"
#include "results/sha256.h"
#include "version.h"

namespace fs = std::filesystem;
using mfglab::engine::sha256_hex;
using mfglab::test::mfglab_cli;
using mfglab::test::read_text;
using mfglab::test::shell;
using mfglab::test::TempDir;

TEST_CASE("SHA-256 of the standard's examples", "[provenance]") {
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // Two blocks: the padding does not fit after 56 bytes.
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(sha256_hex(std::string(1000000, 'a')) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("mfglab --version names mfglab, the SDK and LibTorch", "[provenance]") {
  auto r = mfglab_cli("--version");
  CHECK(r.exit_code == 0);
  CHECK(r.out.find(mfglab::engine::version_line()) != std::string::npos);
  CHECK(r.out.find("mfglab ") == 0);
}

TEST_CASE("summary.json records the versions and each plugin library's SHA-256", "[provenance]") {
  TempDir tmp("provenance");
  auto file = tmp.file("exp.json", R"({"name": "prov", "seeds": [0],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 256, "test_size": 128}},
    "model": {"plugin": "sgm", "params": {"width": 16, "depth": 1, "sample_steps": 5}},
    "train": {"iterations": 3, "batch_size": 32},
    "eval": {"samples": 64, "metrics": [{"plugin": "mmd", "params": {"bandwidth": [1]}}]}})");
  auto r = mfglab_cli("run " + file + " --out " + tmp.str() + " --no-plots --quiet");
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  const auto summary = nlohmann::json::parse(read_text((tmp.path / "prov" / "seed=0" / "summary.json").string()));
  CHECK(summary.at("mfglab_version") == mfglab::engine::mfglab_version());
  CHECK(!summary.at("libtorch_version").get<std::string>().empty());
  const auto& plugins = summary.at("plugins");
  REQUIRE(plugins.size() == 3);
  CHECK(plugins[0].at("name") == "toy2d");
  CHECK(plugins[1].at("name") == "sgm");
  CHECK(plugins[1].at("kind") == "model");
  CHECK(plugins[2].at("name") == "mmd");
  for (const auto& p : plugins) {
    const std::string path = p.at("file");
    CHECK(fs::exists(path));
    CHECK(!p.at("version").get<std::string>().empty());
    // An independent digest of the same file.
    auto sum = shell("sha256sum '" + path + "'");
    REQUIRE(sum.exit_code == 0);
    CHECK(sum.out.substr(0, 64) == p.at("sha256").get<std::string>());
  }
}

TEST_CASE("mfglab rerun repeats a run from its config.json and compares the samples' bytes", "[provenance]") {
  TempDir tmp("rerun");
  auto file = tmp.file("exp.json", R"({"name": "again", "seeds": [3],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 256, "test_size": 128}},
    "model": {"plugin": "sgm", "params": {"width": 16, "depth": 1, "sample_steps": 5}},
    "variants": {"narrow": {"model": {"plugin": "sgm", "params": {"width": 8, "depth": 1, "sample_steps": 5}}},
                 "wide": {"model": {"plugin": "sgm", "params": {"width": 24, "depth": 1, "sample_steps": 5}}}},
    "train": {"iterations": 5, "batch_size": 32},
    "eval": {"samples": 64, "metrics": [{"plugin": "mmd", "params": {"bandwidth": [1]}}]}})");
  REQUIRE(mfglab_cli("run " + file + " --out " + tmp.str() + "/first --no-plots --quiet").exit_code == 0);
  const fs::path run = tmp.path / "first" / "again" / "variant=wide,seed=3";
  auto r = mfglab_cli("rerun " + run.string() + " --out " + tmp.str() + "/second --quiet");
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("byte-identical") != std::string::npos);
  // The rerun is the wide variant's run: same configuration, same seed.
  const auto config = nlohmann::json::parse(read_text((tmp.path / "second" / "again" / "seed=3" / "config.json").string()));
  CHECK(config["model"]["params"]["width"] == 24);
  CHECK(config["seed"] == 3);

  // Samples that differ are said to differ.
  {
    auto original = read_text((run / "samples.npy").string());
    original[original.size() - 1] ^= 1;
    std::ofstream((run / "samples.npy").string(), std::ios::binary) << original;
  }
  auto d = mfglab_cli("rerun " + run.string() + " --out " + tmp.str() + "/third --quiet");
  CHECK(d.exit_code == 1);
  CHECK(d.out.find("DIFFERS") != std::string::npos);

  // Never into the run itself; never from a folder that is not a run.
  const fs::path solo = tmp.path / "second" / "again" / "seed=3";
  CHECK(mfglab_cli("rerun " + solo.string() + " --out " + tmp.str() + "/second").exit_code == 2);
  auto not_run = mfglab_cli("rerun " + tmp.str() + " --out " + tmp.str() + "/fourth");
  CHECK(not_run.exit_code == 2);
  CHECK(not_run.err.find("config.json") != std::string::npos);
}
