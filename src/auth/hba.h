// HbaRules: the rules of a pg_hba.conf-style file (auth_type = hba, auth_hba_file), parsed into
// an immutable value, and the match of one connection against them (first matching line wins).
// Pure: parsing is fed the file's text and a reader for `@file` includes; matching is fed the
// connection's facts. Built on the control thread at start-up and reload, then shared read-only
// between worker threads (std::shared_ptr<const HbaRules>); thread-safe once built.
//
// Syntax is PostgreSQL's (15, plus 16's backslash line continuation):
//   local      DATABASE USER METHOD [OPTIONS]
//   host       DATABASE USER ADDRESS METHOD [OPTIONS]   (also hostssl, hostnossl,
//                                                         hostgssenc, hostnogssenc)
//   host       DATABASE USER IP-ADDRESS IP-MASK METHOD [OPTIONS]
// Fields are separated by whitespace, list items by commas; "double quotes" make a name literal
// (a quoted "all" is a database called all); `#` starts a comment; `@file` reads names from a
// file relative to the hba file's directory.
//
// What sluice supports and what it does not (each unsupported thing is an error naming the file
// and line, or a warning at load where PostgreSQL's meaning is "match nobody here"):
// - connection types: local (a unix-socket client), host, hostssl (TLS clients only), hostnossl
//   (plain TCP only); hostgssenc/hostnogssenc parse but never match (sluice has no GSSAPI).
// - databases: names, all, sameuser; `replication` never matches (a pooler has no replication
//   connections); samerole/samegroup and `+group` users need role membership that sluice
//   cannot see: they never match, with a warning at load.
// - addresses: CIDR (IPv4/IPv6), address + netmask, all; samehost, samenet and host names are
//   errors.
// - methods: trust, reject, md5, password, scram-sha-256, cert, peer (local lines only: the
//   unix socket's peer credentials must name an OS user equal to the database user, as in
//   PostgreSQL without a map); every other method is an error.
// - options (name=value after the method): clientcert (verify-ca, verify-full) and map are
//   kept; map is refused at load (no pg_ident.conf); any other name is an error.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "config/config.h"

namespace sluice::auth {

enum class HbaConnType { kLocal, kHost, kHostSsl, kHostNoSsl, kHostGssEnc, kHostNoGssEnc };
enum class HbaMethod { kTrust, kReject, kMd5, kPassword, kScramSha256, kCert, kPeer };

const char* hbaConnTypeName(HbaConnType t);
const char* hbaMethodName(HbaMethod m);

// One database or user item of a line.
struct HbaName {
  enum class Kind {
    kName,         // a literal name (quoted or not)
    kAll,          // all
    kSameUser,     // sameuser (databases)
    kReplication,  // replication (databases): never matches a pooled connection
    kNever,        // +group, samerole, samegroup: unsupported, never matches
  };
  Kind kind = Kind::kName;
  std::string name;
};

struct HbaRule {
  std::string file;  // where the line is, for messages
  int line = 0;
  HbaConnType type = HbaConnType::kHost;
  std::vector<HbaName> databases;
  std::vector<HbaName> users;
  // Address (not for local lines). `any` for `all`; otherwise family and masked bytes.
  bool any_address = false;
  int family = 0;                  // AF_INET or AF_INET6
  std::array<uint8_t, 16> addr{};  // network order; first 4 bytes for IPv4
  std::array<uint8_t, 16> mask{};
  HbaMethod method = HbaMethod::kReject;
  std::vector<std::pair<std::string, std::string>> options;  // name=value, in line order
};

struct HbaRules {
  std::string path;
  std::vector<HbaRule> rules;
  std::vector<std::string> warnings;  // "file:line: ..." for constructs that never match
};

// Reads an `@file` include; nullopt and a reason when it cannot.
using HbaFileReader =
    std::function<std::optional<std::string>(const std::string& path, std::string* why)>;

// Parses `text` (the contents of `path`). Errors name "path:line:" and what was expected.
Result<HbaRules> parseHba(const std::string& text, const std::string& path,
                          const HbaFileReader& read_include);
// Reads `path` and its includes from disk.
Result<HbaRules> loadHba(const std::string& path);

// One client connection, as the match sees it.
struct HbaConnection {
  bool local = false;  // a unix-socket client
  int family = 0;      // AF_INET or AF_INET6 when !local
  std::array<uint8_t, 16> addr{};
  bool tls = false;
  bool cert_verified = false;  // the client showed a certificate that verified (TLS)
  std::string database;
  std::string user;
};

// The first rule that matches, nullptr if none does.
const HbaRule* matchHba(const HbaRules& rules, const HbaConnection& c);

// What the matching line (nullptr: none) means for this client: the auth type to run, or a
// refusal (SQLSTATE 28000) with PostgreSQL's message. `cert_cn` is the CN of the client's
// verified certificate ("" without one); `peer_user` the OS user at the other end of a unix
// socket ("" if unknown), asked for only by a `peer` line.
struct HbaVerdict {
  std::optional<config::AuthType> type;  // nullopt: refused
  std::string error;                     // when refused
};
HbaVerdict hbaVerdict(const HbaRule* rule, const HbaConnection& c, std::string_view cert_cn,
                      std::string_view peer_user);

// PostgreSQL's wording for the client's host ("[local]" or the address) and its messages:
// no line matched (28000), and a `reject` line matched (28000).
std::string hbaHostText(const HbaConnection& c);
std::string hbaNoMatchMessage(const HbaConnection& c);
std::string hbaRejectMessage(const HbaConnection& c);

// Fills family/addr of `c` from a socket address (an IPv4-mapped IPv6 address becomes IPv4).
// False for anything but AF_INET/AF_INET6 (a unix socket: set c.local instead).
bool hbaSetAddress(HbaConnection& c, const void* sockaddr, unsigned len);

}  // namespace sluice::auth
