// The run-directory contract under faults: a run directory is either complete and
// byte-identical to an uninterrupted run, or clearly failed with its reason; a rerun repairs
// what is missing or damaged and never loses an earlier result.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli.h"

namespace fs = std::filesystem;
using mfglab::test::mfglab_cli;
using mfglab::test::read_text;
using mfglab::test::TempDir;

namespace {

const std::string kFaultDir = MFGLAB_TEST_FAULT_PLUGIN_DIR;

std::string experiment(double lr = 0.01) {
  return R"({"name": "durable", "seeds": [4],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 512, "test_size": 256}},
    "model": {"plugin": "fault_model"},
    "train": {"iterations": 30, "batch_size": 64, "log_every": 10, "checkpoint_every": 10,
              "optimizer": {"type": "adam", "lr": )" + std::to_string(lr) + R"(}},
    "eval": {"samples": 200, "every": 10, "metrics": [{"plugin": "mmd", "params": {"bandwidth": [1]}}]}})";
}

mfglab::test::CliResult run(const std::string& file, const fs::path& out, const std::string& extra = "") {
  return mfglab_cli("--plugin-dir " + kFaultDir + " run " + file + " --out " + out.string() + " " + extra);
}

// losses.csv without its timing column: the numbers a rerun must reproduce.
std::string loss_values(const fs::path& p) {
  std::istringstream in(read_text(p.string()));
  std::string out;
  for (std::string line; std::getline(in, line);) out += line.substr(0, line.rfind(',')) + "\n";
  return out;
}

void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary | std::ios::trunc) << text; }

nlohmann::json json_of(const fs::path& p) { return nlohmann::json::parse(read_text(p.string())); }

}  // namespace

TEST_CASE("a rerun repairs a damaged run directory and gives the bytes of an uninterrupted run", "[durable]") {
  TempDir tmp("durable");
  auto file = tmp.file("exp.json", experiment());
  REQUIRE(run(file, tmp.path / "ref").exit_code == 0);
  const fs::path ref = tmp.path / "ref" / "durable" / "seed=4";
  const std::string samples = read_text((ref / "samples.npy").string());
  const std::string losses = loss_values(ref / "losses.csv");
  const auto ref_summary = json_of(ref / "summary.json");
  REQUIRE(ref_summary["status"] == "ok");
  REQUIRE(ref_summary["files"].is_array());
  CHECK(ref_summary["metric_better"]["mmd"] == "lower");  // from the mmd plugin's manifest
  // The summary is the last file: it lists the figures, which exist.
  for (const auto& f : ref_summary["files"]) CHECK(fs::exists(ref / f.get<std::string>()));
  CHECK(std::find(ref_summary["files"].begin(), ref_summary["files"].end(), "samples.png") != ref_summary["files"].end());

  struct Damage {
    const char* what;
    std::function<void(const fs::path&)> apply;
    const char* kept;  // a file that must have been moved aside, or null
  };
  const std::vector<Damage> damages = {
      {"samples.npy missing under an ok summary", [](const fs::path& d) { fs::remove(d / "samples.npy"); }, nullptr},
      {"a figure missing under an ok summary", [](const fs::path& d) { fs::remove(d / "losses.png"); }, nullptr},
      {"summary.json is garbage", [](const fs::path& d) { write(d / "summary.json", "{\"status\": \"ok\", "); }, nullptr},
      {"no summary, checkpoint.pt is garbage",
       [](const fs::path& d) {
         fs::remove(d / "summary.json");
         write(d / "checkpoint.pt", "not a checkpoint");
       },
       "checkpoint.pt.damaged"},
      {"no summary, checkpoint.pt truncated",
       [](const fs::path& d) {
         fs::remove(d / "summary.json");
         auto bytes = read_text((d / "checkpoint.pt").string());
         write(d / "checkpoint.pt", bytes.substr(0, bytes.size() / 2));
       },
       "checkpoint.pt.damaged"},
      {"no summary, a garbage row in losses.csv",
       [](const fs::path& d) {
         fs::remove(d / "summary.json");
         auto text = read_text((d / "losses.csv").string());
         const size_t third = text.find('\n', text.find('\n', text.find('\n') + 1) + 1);
         write(d / "losses.csv", text.substr(0, third + 1) + "3,garbage\n" + text.substr(text.find('\n', third + 1) + 1));
       },
       "losses.csv.damaged"},
      {"no summary, temporaries of a killed attempt",
       [](const fs::path& d) {
         fs::remove(d / "summary.json");
         write(d / "summary.json.tmp.99999", "{");
         write(d / "checkpoint.pt.tmp.99998", "partial");
       },
       nullptr},
      {"no summary, evals.json is garbage",
       [](const fs::path& d) {
         fs::remove(d / "summary.json");
         write(d / "evals.json", "[{]");
       },
       nullptr},
  };
  for (size_t k = 0; k < damages.size(); ++k) {
    const auto& damage = damages[k];
    DYNAMIC_SECTION(damage.what) {
      const fs::path out = tmp.path / ("out" + std::to_string(k));
      fs::copy(tmp.path / "ref", out, fs::copy_options::recursive);
      const fs::path dir = out / "durable" / "seed=4";
      damage.apply(dir);
      auto r = run(file, out);
      INFO(r.out << r.err);
      CHECK(r.exit_code == 0);
      CHECK(r.out.find("runs: 1 ok") != std::string::npos);
      auto s = json_of(dir / "summary.json");
      CHECK(s["status"] == "ok");
      CHECK(read_text((dir / "samples.npy").string()) == samples);
      CHECK(loss_values(dir / "losses.csv") == losses);
      CHECK(s["final_loss"] == ref_summary["final_loss"]);
      CHECK(s["metrics"] == ref_summary["metrics"]);
      for (const auto& f : s["files"]) CHECK(fs::exists(dir / f.get<std::string>()));
      if (damage.kept) {
        CHECK(fs::exists(dir / damage.kept));
        CHECK(read_text((dir / "log.txt").string()).find(damage.kept) != std::string::npos);
      }
      for (const auto& e : fs::directory_iterator(dir)) CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
    }
  }

  SECTION("a rerun refuses a directory of another configuration; --force replaces it") {
    auto other = tmp.file("other.json", experiment(0.02));
    auto r = run(other, tmp.path / "ref");
    CHECK(r.exit_code == 1);
    CHECK(r.out.find("another configuration") != std::string::npos);
    CHECK(read_text((ref / "samples.npy").string()) == samples);  // untouched
    CHECK(json_of(ref / "summary.json")["status"] == "ok");
    auto forced = run(other, tmp.path / "ref", "--force");
    CHECK(forced.exit_code == 0);
    CHECK(read_text((ref / "samples.npy").string()) != samples);
  }
}

TEST_CASE("an interrupted run resumed at its last checkpoint reports the summary of an uninterrupted one", "[durable]") {
  TempDir tmp("durable_resume");
  auto file = tmp.file("exp.json", experiment());
  REQUIRE(run(file, tmp.path / "ref").exit_code == 0);
  const fs::path ref = tmp.path / "ref" / "durable" / "seed=4";
  const auto ref_summary = json_of(ref / "summary.json");
  // A kill during the final sampling: training is complete, its last checkpoint written.
  fs::copy(tmp.path / "ref", tmp.path / "killed", fs::copy_options::recursive);
  const fs::path dir = tmp.path / "killed" / "durable" / "seed=4";
  for (const char* f : {"summary.json", "samples.npy", "data.npy", "samples.png"}) fs::remove(dir / f);
  auto r = run(file, tmp.path / "killed");
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  auto s = json_of(dir / "summary.json");
  CHECK(s["final_loss"] == ref_summary["final_loss"]);
  CHECK(!s["final_loss"].empty());
  CHECK(s["iterations"] == 30);
  CHECK(s["seconds_per_iteration"] == ref_summary["seconds_per_iteration"]);
  CHECK(s["train_seconds"].get<double>() >= ref_summary["train_seconds"].get<double>());
  CHECK(read_text((dir / "samples.npy").string()) == read_text((ref / "samples.npy").string()));
}

TEST_CASE("a full disk fails the run naming the file, leaves no temporary, and loses nothing", "[durable]") {
  TempDir tmp("durable_disk");
  auto file = tmp.file("exp.json", experiment());
  REQUIRE(run(file, tmp.path / "ref").exit_code == 0);
  const fs::path disk = tmp.path / "disk";
  fs::create_directories(disk);
  // A small file system of its own (root may mount tmpfs; elsewhere this case says so).
  if (mfglab::test::shell("mount -t tmpfs -o size=12k tmpfs " + disk.string()).exit_code != 0) {
    WARN("cannot mount a tmpfs here: the full-disk case is not exercised");
    return;
  }
  struct Unmount {
    fs::path p;
    ~Unmount() { mfglab::test::shell("umount " + p.string()); }
  } unmount{disk};
  auto r = run(file, disk, "--no-plots");
  INFO(r.out << r.err);
  const fs::path dir = disk / "durable" / "seed=4";
  if (r.exit_code != 0) {
    CHECK(r.exit_code == 1);
    CHECK(r.out.find("No space left on device") != std::string::npos);
    CHECK(r.out.find("cannot write " + disk.string()) != std::string::npos);
  }
  if (fs::exists(dir))
    for (const auto& e : fs::directory_iterator(dir)) CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
  // With room again, the same command finishes the run with the bytes of an uninterrupted one.
  REQUIRE(mfglab::test::shell("mount -o remount,size=64m " + disk.string()).exit_code == 0);
  auto again = run(file, disk, "--no-plots");
  INFO(again.out << again.err);
  CHECK(again.exit_code == 0);
  CHECK(read_text((dir / "samples.npy").string()) ==
        read_text((tmp.path / "ref" / "durable" / "seed=4" / "samples.npy").string()));
  CHECK(r.exit_code != 0);  // 12 KiB cannot hold a run: the first attempt must have failed
}

TEST_CASE("SIGKILL of the whole run at any moment, then the same command: the bytes of an uninterrupted run", "[durable]") {
  TempDir tmp("durable_kill");
  const std::string text = R"({"name": "killed", "seeds": [2],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 2048, "test_size": 256}},
    "model": {"plugin": "fault_model"},
    "train": {"iterations": 40000, "batch_size": 64, "log_every": 2000, "checkpoint_every": 5000},
    "eval": {"samples": 500, "every": 10000, "metrics": [{"plugin": "mmd", "params": {"bandwidth": [1]}}]}})";
  auto file = tmp.file("exp.json", text);
  REQUIRE(run(file, tmp.path / "ref").exit_code == 0);
  const fs::path ref = tmp.path / "ref" / "killed" / "seed=2";
  const fs::path out = tmp.path / "out", dir = out / "killed" / "seed=2";
  // Kill the parent and its worker (one process group) after growing delays: training,
  // evaluation, figures or the summary, wherever it happens to be.
  int killed = 0;
  for (double delay : {1.5, 2.5, 3.5, 4.5}) {
    auto r = mfglab::test::shell("setsid \"" + std::string(MFGLAB_BINARY) + "\" --plugin-dir " + kFaultDir + " run " + file +
                                 " --out " + out.string() + " & pid=$!; sleep " + std::to_string(delay) +
                                 "; kill -KILL -- -$pid 2>/dev/null && echo killed; wait $pid 2>/dev/null; true");
    killed += r.out.find("killed") != std::string::npos;
    // Whatever the moment, the directory holds a finished run or an unfinished one, never a
    // summary that claims what is not there.
    if (fs::exists(dir / "summary.json") && json_of(dir / "summary.json")["status"] == "ok")
      for (const auto& f : json_of(dir / "summary.json")["files"]) CHECK(fs::exists(dir / f.get<std::string>()));
  }
  CHECK(killed >= 1);
  auto r = run(file, out);
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  CHECK(json_of(dir / "summary.json")["status"] == "ok");
  CHECK(read_text((dir / "samples.npy").string()) == read_text((ref / "samples.npy").string()));
  CHECK(loss_values(dir / "losses.csv") == loss_values(ref / "losses.csv"));
  CHECK(json_of(dir / "evals.json") == json_of(ref / "evals.json"));
  CHECK(json_of(dir / "summary.json")["metrics"] == json_of(ref / "summary.json")["metrics"]);
}
