// Fuzz target: the operator's `ops_allow` list (http::CidrSet), one entry per input line, and
// each line again as a peer address for contains(). Invariant: a bare address that parses as an
// entry of its own contains itself.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "http/cidr_set.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> lines;
  while (!in.empty() && lines.size() < 64) {
    size_t nl = in.find('\n');
    lines.emplace_back(in.substr(0, nl));
    if (nl == std::string_view::npos) break;
    in.remove_prefix(nl + 1);
  }
  std::vector<std::string> errors;
  http::CidrSet set = http::CidrSet::parse(lines, &errors);
  fuzz::check(set.size() + errors.size() == lines.size(), "an entry neither kept nor reported");
  for (const std::string& line : lines) {
    (void)set.contains(line);
    if (line.find('/') != std::string::npos) continue;
    http::CidrSet one = http::CidrSet::parse({line});
    if (one.size() == 1) fuzz::check(one.contains(line), "a bare address does not contain itself");
  }
  return 0;
}
