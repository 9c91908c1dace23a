// Helpers shared by the libFuzzer targets in tests/fuzz: building framed messages from fuzzed
// bytes and failing loudly on a broken invariant. Header-only; each target is single-threaded.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace sluice::fuzz {

// A broken invariant: print it and abort so libFuzzer records the input as a crash.
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
  std::abort();
}
inline void check(bool ok, const char* what) {
  if (!ok) fail(what);
}

// One message as on the wire: type byte, int32 length (payload + 4), payload.
inline std::string frame(char type, std::string_view payload) {
  std::string out(1, type);
  uint32_t len = uint32_t(payload.size() + 4);
  out.push_back(char(len >> 24));
  out.push_back(char(len >> 16));
  out.push_back(char(len >> 8));
  out.push_back(char(len));
  out.append(payload);
  return out;
}

// True if `data` holds a SCRAM iteration count ("i=" then digits) of 5 digits or more. The count
// comes from the server and sluice derives keys with it (PBKDF2), so a large one is a slow input
// by design (as in libpq), not a hang the fuzzer should report.
inline bool hasLargeIterations(std::string_view data) {
  for (size_t p = data.find("i="); p != std::string_view::npos; p = data.find("i=", p + 1)) {
    size_t digits = 0;
    while (p + 2 + digits < data.size() && data[p + 2 + digits] >= '0' &&
           data[p + 2 + digits] <= '9') {
      ++digits;
    }
    if (digits >= 5) return true;
  }
  return false;
}

}  // namespace sluice::fuzz
