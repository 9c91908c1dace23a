// Fuzz target: tools::parsePgUrl, the postgres:// URLs `sluice stress` and `sluice check` take.
// Invariants: a parsed URL has a user and a port in 1..65535, and its redacted form does not
// depend on the password (only ":***" marks that there is one).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_util.h"
#include "tools/pg_url.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto url = tools::parsePgUrl(in, "fuzzer");
  if (!url.isOk()) {
    fuzz::check(!url.message().empty(), "an error without a message");
    return 0;
  }
  fuzz::check(!url->user.empty(), "no user despite a default");
  fuzz::check(url->port >= 1 && url->port <= 65535, "port out of range");
  std::string redacted = url->redacted();
  // The password changes nothing in the redacted form but the ":***" that stands for it.
  tools::PgUrl without = *url;
  without.password.clear();
  std::string expected = without.redacted();
  if (!url->password.empty()) {
    size_t at = redacted.find(":***");
    fuzz::check(at != std::string::npos, "redacted() does not mark the password");
    redacted.erase(at, 4);
  }
  fuzz::check(redacted == expected, "redacted() depends on the password");
  return 0;
}
