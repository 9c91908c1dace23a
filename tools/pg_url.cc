#include "tools/pg_url.h"

#include <fmt/format.h>

#include <cctype>
#include <charconv>

namespace sluice::tools {

namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Result<std::string> percentDecode(std::string_view s, std::string_view what) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    int hi = i + 2 < s.size() ? hexValue(s[i + 1]) : -1;
    int lo = i + 2 < s.size() ? hexValue(s[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      return Status::error(fmt::format("bad percent-encoding in the {} of the URL", what));
    }
    out.push_back(char(hi * 16 + lo));
    i += 2;
  }
  return out;
}

std::string percentEncode(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(char(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

Result<int> parsePort(std::string_view port) {
  int p = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || ptr != port.data() + port.size() || p < 1 || p > 65535) {
    return Status::error(
        fmt::format("port \"{}\" in the URL is not a number from 1 to 65535", port));
  }
  return p;
}

}  // namespace

std::string PgUrl::redacted() const {
  std::string host_part = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  std::string s = "postgres://" + percentEncode(user);
  if (!password.empty()) s += ":***";
  if (!host.empty() && host[0] == '/') {
    s += fmt::format("@:{}/{}?host={}", port, percentEncode(dbname), host);
  } else {
    s += fmt::format("@{}:{}/{}", host_part, port, percentEncode(dbname));
  }
  return s;
}

Result<PgUrl> parsePgUrl(std::string_view url, std::string_view default_user) {
  PgUrl u;
  std::string_view rest;
  for (std::string_view scheme : {"postgresql://", "postgres://"}) {
    if (url.substr(0, scheme.size()) == scheme) {
      rest = url.substr(scheme.size());
      break;
    }
  }
  if (rest.data() == nullptr) {
    return Status::error(
        fmt::format("URL \"{}\" must start with postgres:// or postgresql://", url));
  }
  std::string_view query;
  if (size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  std::string_view path;
  if (size_t slash = rest.find('/'); slash != std::string_view::npos) {
    path = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
  }
  // userinfo: up to the last '@' (a password may contain an unencoded '@').
  if (size_t at = rest.rfind('@'); at != std::string_view::npos) {
    std::string_view userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    std::string_view user = userinfo, password;
    if (size_t colon = userinfo.find(':'); colon != std::string_view::npos) {
      user = userinfo.substr(0, colon);
      password = userinfo.substr(colon + 1);
    }
    auto du = percentDecode(user, "user");
    if (!du) return du.status();
    auto dp = percentDecode(password, "password");
    if (!dp) return dp.status();
    u.user = std::move(*du);
    u.password = std::move(*dp);
  }
  // host[:port], host may be [v6]
  std::string_view hostport = rest;
  std::string_view port;
  if (!hostport.empty() && hostport[0] == '[') {
    size_t close = hostport.find(']');
    if (close == std::string_view::npos) {
      return Status::error("unterminated [ in the host of the URL");
    }
    u.host = std::string(hostport.substr(1, close - 1));
    std::string_view after = hostport.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return Status::error("unexpected text after ] in the host of the URL");
      port = after.substr(1);
    }
  } else {
    if (size_t colon = hostport.rfind(':'); colon != std::string_view::npos) {
      port = hostport.substr(colon + 1);
      hostport = hostport.substr(0, colon);
    }
    auto dh = percentDecode(hostport, "host");
    if (!dh) return dh.status();
    if (!dh->empty()) u.host = std::move(*dh);
  }
  if (!port.empty()) {
    auto p = parsePort(port);
    if (!p) return p.status();
    u.port = *p;
  }
  auto dd = percentDecode(path, "database name");
  if (!dd) return dd.status();
  u.dbname = std::move(*dd);
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view kv = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (kv.empty()) continue;
    size_t eq = kv.find('=');
    if (eq == std::string_view::npos) {
      return Status::error(fmt::format("URL parameter \"{}\" has no value (key=value)", kv));
    }
    auto key = percentDecode(kv.substr(0, eq), "parameters");
    if (!key) return key.status();
    auto value = percentDecode(kv.substr(eq + 1), "parameters");
    if (!value) return value.status();
    if (*key == "host") {
      u.host = *value;
    } else if (*key == "port") {
      auto p = parsePort(*value);
      if (!p) return p.status();
      u.port = *p;
    } else if (*key == "user") {
      u.user = *value;
    } else if (*key == "password") {
      u.password = *value;
    } else if (*key == "dbname") {
      u.dbname = *value;
    } else if (*key == "sslmode") {
      if (*value != "disable" && *value != "allow" && *value != "prefer") {
        return Status::error(fmt::format(
            "sslmode={} is not supported: sluice's tools do not speak TLS (use sslmode=disable)",
            *value));
      }
    } else if (*key == "connect_timeout") {
      // the tools have --timeout; accepted for URLs copied from applications
    } else {
      u.params.emplace_back(std::move(*key), std::move(*value));
    }
  }
  if (u.user.empty()) u.user = std::string(default_user);
  if (u.user.empty()) return Status::error("the URL names no user (postgres://USER@host/db)");
  if (u.dbname.empty()) u.dbname = u.user;
  return u;
}

}  // namespace sluice::tools
