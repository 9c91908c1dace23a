// CidrSet: the `ops_allow` list (IPv4 and IPv6 CIDRs) that may read /readyz and /metrics.
// Parsed from a config snapshot's list; immutable afterwards, so thread-safe to share.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace sluice::http {

class CidrSet {
 public:
  // "10.0.0.0/8", "::1/128", or a bare address (one host). An entry that does not parse is
  // left out and described in `errors` (when given), e.g. "'10.0.0.0/33': prefix above 32".
  static CidrSet parse(const std::vector<std::string>& entries,
                       std::vector<std::string>* errors = nullptr);
  // `address` is a numeric peer address: "127.0.0.1", "::1"; an IPv4-mapped IPv6 address
  // ("::ffff:10.1.2.3") matches as the IPv4 address it carries. Anything else: false.
  bool contains(const std::string& address) const;
  size_t size() const { return nets_.size(); }

 private:
  struct Net {
    bool v6 = false;
    std::array<uint8_t, 16> addr{};  // IPv4 in the first 4 bytes
    int prefix = 0;
  };
  std::vector<Net> nets_;
};

}  // namespace sluice::http
