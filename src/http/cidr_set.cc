#include "http/cidr_set.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace sluice::http {

namespace {

// Parses a numeric address into `out`; true on success.
bool parseAddress(const std::string& text, bool* v6, std::array<uint8_t, 16>* out) {
  out->fill(0);
  in_addr a4{};
  if (inet_pton(AF_INET, text.c_str(), &a4) == 1) {
    *v6 = false;
    std::memcpy(out->data(), &a4, 4);
    return true;
  }
  in6_addr a6{};
  if (inet_pton(AF_INET6, text.c_str(), &a6) == 1) {
    static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(&a6, kMapped, 12) == 0) {
      *v6 = false;
      std::memcpy(out->data(), reinterpret_cast<const uint8_t*>(&a6) + 12, 4);
    } else {
      *v6 = true;
      std::memcpy(out->data(), &a6, 16);
    }
    return true;
  }
  return false;
}

bool prefixMatches(const std::array<uint8_t, 16>& a, const std::array<uint8_t, 16>& b, int prefix) {
  int full = prefix / 8;
  if (std::memcmp(a.data(), b.data(), size_t(full)) != 0) return false;
  int rest = prefix % 8;
  if (rest == 0) return true;
  uint8_t mask = uint8_t(0xff << (8 - rest));
  return (a[size_t(full)] & mask) == (b[size_t(full)] & mask);
}

}  // namespace

CidrSet CidrSet::parse(const std::vector<std::string>& entries, std::vector<std::string>* errors) {
  CidrSet set;
  auto fail = [&](const std::string& entry, const std::string& why) {
    if (errors) errors->push_back("'" + entry + "': " + why);
  };
  for (const auto& entry : entries) {
    std::string addr = entry;
    int prefix = -1;
    size_t slash = entry.find('/');
    if (slash != std::string::npos) {
      addr = entry.substr(0, slash);
      std::string len = entry.substr(slash + 1);
      if (len.empty()) {
        fail(entry, "expected a prefix length after '/'");
        continue;
      }
      char* end = nullptr;
      long v = std::strtol(len.c_str(), &end, 10);
      if (end == nullptr || *end != '\0' || v < 0) {
        fail(entry, "expected a prefix length after '/'");
        continue;
      }
      prefix = int(std::min(v, 1000L));
    }
    Net net;
    // A mapped IPv6 network written as such is kept as IPv6 only if its prefix reaches below
    // the mapped part; "::ffff:10.0.0.0/104" means 10.0.0.0/8.
    bool was_mapped = addr.find('.') != std::string::npos && addr.find(':') != std::string::npos;
    if (!parseAddress(addr, &net.v6, &net.addr)) {
      fail(entry, "not an IPv4 or IPv6 address");
      continue;
    }
    int max = net.v6 ? 128 : 32;
    if (was_mapped && !net.v6 && prefix >= 0) {
      if (prefix < 96) {
        fail(entry, "an IPv4-mapped network needs a prefix of at least 96");
        continue;
      }
      prefix -= 96;
    }
    if (prefix > max) {
      fail(entry, "prefix above " + std::to_string(max));
      continue;
    }
    net.prefix = prefix < 0 ? max : prefix;
    set.nets_.push_back(net);
  }
  return set;
}

bool CidrSet::contains(const std::string& address) const {
  bool v6 = false;
  std::array<uint8_t, 16> a{};
  // A link-local peer comes with its zone ("fe80::1%eth0"); the zone is not part of a CIDR.
  if (!parseAddress(address.substr(0, address.find('%')), &v6, &a)) return false;
  for (const auto& n : nets_) {
    if (n.v6 == v6 && prefixMatches(a, n.addr, n.prefix)) return true;
  }
  return false;
}

}  // namespace sluice::http
