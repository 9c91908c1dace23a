// Fuzz target: tools::parsePgUrl, the postgres:// URLs `sluice stress` and `sluice check` take.
// Invariants: a parsed URL has a user, a database and a port in 1..65535, and its redacted form
// holds no password.
#include <algorithm>
#include <cctype>
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
  // Only for passwords that cannot turn up elsewhere: alphanumeric (so no percent-encoding),
  // and not part of the user, host or database shown.
  const std::string& pw = url->password;
  bool plain = pw.size() >= 4 && std::all_of(pw.begin(), pw.end(),
                                             [](unsigned char c) { return std::isalnum(c) != 0; });
  bool elsewhere = url->user.find(pw) != std::string::npos ||
                   url->host.find(pw) != std::string::npos ||
                   url->dbname.find(pw) != std::string::npos ||
                   std::string("postgres://").find(pw) != std::string::npos ||
                   std::to_string(url->port).find(pw) != std::string::npos;
  if (plain && !elsewhere) {
    fuzz::check(redacted.find(pw) == std::string::npos, "redacted() shows the password");
  }
  return 0;
}
