// Fuzz target: arbitrary bytes as an auth_hba_file (pg_hba.conf syntax) through auth::parseHba,
// then matched against a few connections. The input is split at its first NUL: before it the
// hba file, after it the contents every `@file` include reads. Invariants: a rejection names
// the file and a line (or an included file); every rule has a line within the file; a match
// returns one of the rules, and never a line whose connection type cannot match.
#include <arpa/inet.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "auth/hba.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  std::string all(reinterpret_cast<const char*>(data), size);
  size_t nul = all.find('\0');
  std::string text = all.substr(0, nul);
  std::string include = nul == std::string::npos ? std::string() : all.substr(nul + 1);
  const std::string path = "/nonexistent/sluice-fuzz/hba.conf";
  auto reader = [&](const std::string& p, std::string* why) -> std::optional<std::string> {
    if (p.rfind("/nonexistent/", 0) != 0 && p[0] == '/') {
      *why = "outside the fuzz directory";
      return std::nullopt;
    }
    return include;
  };
  auto rules = auth::parseHba(text, path, reader);
  if (!rules) {
    fuzz::check(rules.message().rfind("/", 0) == 0, "an hba error does not name its file");
    fuzz::check(rules.message().find(": ") != std::string::npos,
                "an hba error has no 'file:line: ' prefix");
    return 0;
  }
  int lines = 1;
  for (char c : text) lines += c == '\n';
  for (const auto& r : rules->rules) {
    fuzz::check(r.line >= 1 && r.line <= lines, "an hba rule's line is outside the file");
    fuzz::check(!r.databases.empty() && !r.users.empty(), "an hba rule without names");
    (void)auth::hbaMethodName(r.method);
    (void)auth::hbaConnTypeName(r.type);
  }
  auth::HbaConnection conns[4];
  conns[0].local = true;
  conns[1].family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", conns[1].addr.data());
  conns[2].family = AF_INET6;
  inet_pton(AF_INET6, "::1", conns[2].addr.data());
  conns[3] = conns[1];
  conns[3].tls = true;
  for (auto& c : conns) {
    for (const char* db : {"all", "appdb", "replication", "alice"}) {
      c.database = db;
      c.user = "alice";
      const auth::HbaRule* r = auth::matchHba(*rules, c);
      if (!r) {
        (void)auth::hbaNoMatchMessage(c);
        continue;
      }
      fuzz::check(r >= rules->rules.data() && r < rules->rules.data() + rules->rules.size(),
                  "matchHba returned something not in the rules");
      fuzz::check(c.local == (r->type == auth::HbaConnType::kLocal),
                  "a local line matched TCP or a host line matched a unix socket");
      fuzz::check(
          r->type != auth::HbaConnType::kHostGssEnc && r->type != auth::HbaConnType::kHostNoGssEnc,
          "a GSS line matched");
      fuzz::check(!(r->type == auth::HbaConnType::kHostSsl && !c.tls), "hostssl matched plain");
      fuzz::check(!(r->type == auth::HbaConnType::kHostNoSsl && c.tls), "hostnossl matched TLS");
    }
  }
  return 0;
}
