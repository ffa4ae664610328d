// Include after <catch2/catch.hpp> in any test that also sees LibTorch headers.
// LibTorch's logging headers (glog) define CHECK as a fatal check; if they come after
// catch.hpp, Catch's non-fatal CHECK is replaced and records nothing. This puts
// Catch's definition back whatever the include order (the shared precompiled header
// already orders them right; this keeps a test correct without it).
#pragma once

#include <catch2/catch.hpp>

#undef CHECK
#define CHECK(...) \
  INTERNAL_CATCH_TEST("CHECK", Catch::ResultDisposition::ContinueOnFailure, __VA_ARGS__)
