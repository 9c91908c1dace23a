#include "auth/hba.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "protocol/auth_crypto.h"

namespace sluice::auth {

namespace {

constexpr int kMaxIncludeDepth = 10;

// One token of a field: its text, whether any part of it was quoted, and the next token is part
// of the same field (a comma followed it).
struct Token {
  std::string text;
  bool quoted = false;
};
using Field = std::vector<Token>;

bool isSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

std::string dirOf(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

class Parser {
 public:
  Parser(const HbaFileReader& reader, HbaRules& out) : reader_(reader), out_(out) {}

  Status parseFile(const std::string& text, const std::string& path) {
    // Physical lines to logical lines: a backslash at the very end continues the line.
    std::vector<std::pair<int, std::string>> lines;
    std::istringstream in(text);
    std::string phys;
    int lineno = 0;
    std::string logical;
    int start = 0;
    bool continuing = false;
    while (std::getline(in, phys)) {
      ++lineno;
      if (!phys.empty() && phys.back() == '\r') phys.pop_back();
      if (!continuing) start = lineno;
      if (!phys.empty() && phys.back() == '\\') {
        phys.pop_back();
        logical += phys;
        logical += ' ';
        continuing = true;
        continue;
      }
      logical += phys;
      lines.emplace_back(start, std::move(logical));
      logical.clear();
      continuing = false;
    }
    if (continuing) lines.emplace_back(start, std::move(logical));
    for (auto& [n, l] : lines) {
      Status st = parseLine(l, path, n);
      if (!st) return st;
    }
    return Status::ok();
  }

 private:
  static std::string where(const std::string& path, int line) {
    return fmt::format("{}:{}: ", path, line);
  }

  // Splits a logical line into fields of comma-separated tokens.
  static Result<std::vector<Field>> tokenize(const std::string& l, const std::string& at) {
    std::vector<Field> fields;
    size_t i = 0;
    const size_t n = l.size();
    bool after_comma = false;
    while (true) {
      while (i < n && isSpace(l[i])) ++i;
      if (i >= n || l[i] == '#') {
        if (after_comma) return Status::error(at + "a list ends with a comma; expected a name");
        break;
      }
      Token t;
      bool in_quotes = false;
      bool any = false;
      while (i < n) {
        char c = l[i];
        if (in_quotes) {
          if (c == '"') {
            if (i + 1 < n && l[i + 1] == '"') {
              t.text += '"';
              i += 2;
              continue;
            }
            in_quotes = false;
            ++i;
            continue;
          }
          t.text += c;
          ++i;
          continue;
        }
        if (isSpace(c) || c == ',' || c == '#') break;
        if (c == '"') {
          in_quotes = true;
          t.quoted = true;
          any = true;
          ++i;
          continue;
        }
        t.text += c;
        any = true;
        ++i;
      }
      if (in_quotes) return Status::error(at + "unterminated quoted name");
      if (!any) {
        // A comma with nothing before it.
        return Status::error(at + "unexpected ','; expected a name");
      }
      if (after_comma) {
        fields.back().push_back(std::move(t));
      } else {
        fields.push_back(Field{std::move(t)});
      }
      after_comma = false;
      if (i < n && l[i] == ',') {
        after_comma = true;
        ++i;
      }
    }
    return fields;
  }

  // The names of an `@file` include: every token of every line.
  Status readInclude(const std::string& name, const std::string& from_path, const std::string& at,
                     std::vector<Token>& out, int depth) {
    if (depth > kMaxIncludeDepth) {
      return Status::error(
          at + fmt::format("@{}: includes nest deeper than {}", name, kMaxIncludeDepth));
    }
    if (name.empty()) return Status::error(at + "'@' must be followed by a file name");
    std::string path = name[0] == '/' ? name : dirOf(from_path) + "/" + name;
    std::string why;
    auto text = reader_ ? reader_(path, &why) : std::nullopt;
    if (!text) {
      return Status::error(at + fmt::format("cannot read included file \"{}\"{}{}", path,
                                            why.empty() ? "" : ": ", why));
    }
    std::istringstream in(*text);
    std::string l;
    int lineno = 0;
    while (std::getline(in, l)) {
      ++lineno;
      auto fields = tokenize(l, where(path, lineno));
      if (!fields) return fields.status();
      for (auto& f : *fields) {
        for (auto& t : f) {
          if (!t.quoted && !t.text.empty() && t.text[0] == '@') {
            Status st = readInclude(t.text.substr(1), path, where(path, lineno), out, depth + 1);
            if (!st) return st;
          } else {
            out.push_back(std::move(t));
          }
        }
      }
    }
    return Status::ok();
  }

  Result<std::vector<HbaName>> names(const Field& f, bool database, const std::string& path,
                                     const std::string& at) {
    std::vector<Token> tokens;
    for (const auto& t : f) {
      if (!t.quoted && !t.text.empty() && t.text[0] == '@') {
        Status st = readInclude(t.text.substr(1), path, at, tokens, 1);
        if (!st) return st;
      } else {
        tokens.push_back(t);
      }
    }
    std::vector<HbaName> out;
    for (auto& t : tokens) {
      HbaName nm;
      nm.name = t.text;
      if (!t.quoted) {
        if (t.text == "all") {
          nm.kind = HbaName::Kind::kAll;
        } else if (database && t.text == "sameuser") {
          nm.kind = HbaName::Kind::kSameUser;
        } else if (database && t.text == "replication") {
          nm.kind = HbaName::Kind::kReplication;
        } else if (database && (t.text == "samerole" || t.text == "samegroup")) {
          nm.kind = HbaName::Kind::kNever;
          out_.warnings.push_back(at + t.text +
                                  ": role membership is not supported by sluice; this item "
                                  "never matches");
        } else if (!database && t.text[0] == '+') {
          nm.kind = HbaName::Kind::kNever;
          out_.warnings.push_back(at + t.text +
                                  ": group membership (+role) is not supported by sluice; this "
                                  "item never matches");
        }
      }
      out.push_back(std::move(nm));
    }
    if (out.empty()) {
      return Status::error(at + (database ? "expected a database name" : "expected a user name"));
    }
    return out;
  }

  static Status single(const Field& f, const char* what, const std::string& at) {
    if (f.size() != 1) {
      return Status::error(at + fmt::format("multiple values in the {} field", what));
    }
    return Status::ok();
  }

  static bool parseIp(const std::string& s, int* family, std::array<uint8_t, 16>* out) {
    out->fill(0);
    if (inet_pton(AF_INET, s.c_str(), out->data()) == 1) {
      *family = AF_INET;
      return true;
    }
    if (inet_pton(AF_INET6, s.c_str(), out->data()) == 1) {
      *family = AF_INET6;
      return true;
    }
    return false;
  }

  static void maskFromBits(int bits, std::array<uint8_t, 16>* mask) {
    mask->fill(0);
    for (int i = 0; i < 16 && bits > 0; ++i, bits -= 8) {
      (*mask)[size_t(i)] = bits >= 8 ? 0xff : uint8_t(0xff << (8 - bits));
    }
  }

  Status parseLine(const std::string& l, const std::string& path, int lineno) {
    const std::string at = where(path, lineno);
    auto fr = tokenize(l, at);
    if (!fr) return fr.status();
    auto& fields = *fr;
    if (fields.empty()) return Status::ok();
    HbaRule r;
    r.file = path;
    r.line = lineno;
    size_t k = 0;
    const Field& tf = fields[k++];
    if (Status st = single(tf, "connection type", at); !st) return st;
    const std::string& type = tf[0].text;
    if (type == "local") {
      r.type = HbaConnType::kLocal;
    } else if (type == "host") {
      r.type = HbaConnType::kHost;
    } else if (type == "hostssl") {
      r.type = HbaConnType::kHostSsl;
    } else if (type == "hostnossl") {
      r.type = HbaConnType::kHostNoSsl;
    } else if (type == "hostgssenc") {
      r.type = HbaConnType::kHostGssEnc;
    } else if (type == "hostnogssenc") {
      r.type = HbaConnType::kHostNoGssEnc;
    } else {
      return Status::error(at + fmt::format("invalid connection type \"{}\"; expected local, "
                                            "host, hostssl, hostnossl, hostgssenc or hostnogssenc",
                                            type));
    }
    if (k >= fields.size()) return Status::error(at + "end of line before the database field");
    auto dbs = names(fields[k++], true, path, at);
    if (!dbs) return dbs.status();
    r.databases = std::move(*dbs);
    if (k >= fields.size()) return Status::error(at + "end of line before the user field");
    auto users = names(fields[k++], false, path, at);
    if (!users) return users.status();
    r.users = std::move(*users);

    if (r.type != HbaConnType::kLocal) {
      if (k >= fields.size()) {
        return Status::error(at + "end of line before the IP address field");
      }
      const Field& af = fields[k++];
      if (Status st = single(af, "IP address", at); !st) return st;
      std::string a = af[0].text;
      if (a == "all" && !af[0].quoted) {
        r.any_address = true;
      } else if ((a == "samehost" || a == "samenet") && !af[0].quoted) {
        return Status::error(at + fmt::format("address \"{}\" is not supported by sluice; "
                                              "write the address as a CIDR (e.g. 10.0.0.0/8)",
                                              a));
      } else {
        auto slash = a.find('/');
        std::string ip = slash == std::string::npos ? a : a.substr(0, slash);
        if (!parseIp(ip, &r.family, &r.addr)) {
          return Status::error(at + fmt::format("invalid IP address \"{}\"; expected an IPv4 or "
                                                "IPv6 address or CIDR (host names are not "
                                                "supported by sluice)",
                                                ip));
        }
        const int max_bits = r.family == AF_INET ? 32 : 128;
        if (slash != std::string::npos) {
          std::string bits = a.substr(slash + 1);
          int b = -1;
          if (!bits.empty() && bits.size() <= 3 &&
              bits.find_first_not_of("0123456789") == std::string::npos) {
            b = std::stoi(bits);
          }
          if (b < 0 || b > max_bits) {
            return Status::error(at + fmt::format("invalid CIDR mask in address \"{}\"; expected "
                                                  "/0 to /{}",
                                                  a, max_bits));
          }
          maskFromBits(b, &r.mask);
        } else {
          // The netmask is the next field.
          if (k >= fields.size()) {
            return Status::error(at + fmt::format("end of line after address \"{}\": expected "
                                                  "a netmask or a CIDR (address/bits)",
                                                  a));
          }
          const Field& mf = fields[k++];
          if (Status st = single(mf, "IP mask", at); !st) return st;
          int mfam = 0;
          if (!parseIp(mf[0].text, &mfam, &r.mask)) {
            return Status::error(at + fmt::format("invalid IP mask \"{}\"", mf[0].text));
          }
          if (mfam != r.family) {
            return Status::error(at + fmt::format("IP address and mask do not match: \"{}\" and "
                                                  "\"{}\"",
                                                  a, mf[0].text));
          }
        }
        for (size_t i = 0; i < 16; ++i) r.addr[i] &= r.mask[i];
      }
    }

    if (k >= fields.size())
      return Status::error(at +
                           "end of line before the authentication "
                           "method");
    const Field& mf = fields[k++];
    if (Status st = single(mf, "authentication method", at); !st) return st;
    const std::string& m = mf[0].text;
    if (m == "trust") {
      r.method = HbaMethod::kTrust;
    } else if (m == "reject") {
      r.method = HbaMethod::kReject;
    } else if (m == "md5") {
      r.method = HbaMethod::kMd5;
    } else if (m == "password") {
      r.method = HbaMethod::kPassword;
    } else if (m == "scram-sha-256") {
      r.method = HbaMethod::kScramSha256;
    } else if (m == "cert") {
      r.method = HbaMethod::kCert;
    } else if (m == "peer") {
      r.method = HbaMethod::kPeer;
    } else {
      return Status::error(at + fmt::format("authentication method \"{}\" is not supported by "
                                            "sluice; expected trust, reject, md5, password, "
                                            "scram-sha-256, cert or peer",
                                            m));
    }
    if (r.method == HbaMethod::kPeer && r.type != HbaConnType::kLocal) {
      return Status::error(at + "peer authentication is only supported on local sockets");
    }
    if (r.method == HbaMethod::kCert && r.type != HbaConnType::kHostSsl) {
      return Status::error(at + "cert authentication is only supported on hostssl connections");
    }
    for (; k < fields.size(); ++k) {
      for (const auto& t : fields[k]) {
        auto eq = t.text.find('=');
        if (eq == std::string::npos || eq == 0) {
          return Status::error(at + fmt::format("authentication option \"{}\" is not in "
                                                "name=value format",
                                                t.text));
        }
        std::string name = t.text.substr(0, eq);
        std::string value = t.text.substr(eq + 1);
        if (name == "clientcert") {
          if (r.type != HbaConnType::kHostSsl) {
            return Status::error(at + "clientcert can only be configured for hostssl rows");
          }
          if (value != "verify-ca" && value != "verify-full") {
            return Status::error(at + fmt::format("invalid value for clientcert: \"{}\"; "
                                                  "expected verify-ca or verify-full",
                                                  value));
          }
          if (r.method == HbaMethod::kCert && value != "verify-full") {
            return Status::error(at +
                                 "clientcert only accepts verify-full when using cert "
                                 "authentication");
          }
        } else if (name == "map") {
          return Status::error(at + fmt::format("map={}: user name maps (pg_ident.conf) are "
                                                "not supported by sluice",
                                                value));
        } else {
          return Status::error(at + fmt::format("unknown authentication option \"{}\"; sluice "
                                                "knows clientcert",
                                                name));
        }
        r.options.emplace_back(std::move(name), std::move(value));
      }
    }
    out_.rules.push_back(std::move(r));
    return Status::ok();
  }

  const HbaFileReader& reader_;
  HbaRules& out_;
};

bool nameMatches(const std::vector<HbaName>& list, const std::string& value,
                 const std::string& user) {
  for (const auto& n : list) {
    switch (n.kind) {
      case HbaName::Kind::kAll:
        return true;
      case HbaName::Kind::kName:
        if (n.name == value) return true;
        break;
      case HbaName::Kind::kSameUser:
        if (value == user) return true;
        break;
      case HbaName::Kind::kReplication:
      case HbaName::Kind::kNever:
        break;
    }
  }
  return false;
}

std::string encryptionText(const HbaConnection& c) {
  return c.tls ? "SSL encryption" : "no encryption";
}

}  // namespace

const char* hbaConnTypeName(HbaConnType t) {
  switch (t) {
    case HbaConnType::kLocal:
      return "local";
    case HbaConnType::kHost:
      return "host";
    case HbaConnType::kHostSsl:
      return "hostssl";
    case HbaConnType::kHostNoSsl:
      return "hostnossl";
    case HbaConnType::kHostGssEnc:
      return "hostgssenc";
    case HbaConnType::kHostNoGssEnc:
      return "hostnogssenc";
  }
  return "?";
}

const char* hbaMethodName(HbaMethod m) {
  switch (m) {
    case HbaMethod::kTrust:
      return "trust";
    case HbaMethod::kReject:
      return "reject";
    case HbaMethod::kMd5:
      return "md5";
    case HbaMethod::kPassword:
      return "password";
    case HbaMethod::kScramSha256:
      return "scram-sha-256";
    case HbaMethod::kCert:
      return "cert";
    case HbaMethod::kPeer:
      return "peer";
  }
  return "?";
}

Result<HbaRules> parseHba(const std::string& text, const std::string& path,
                          const HbaFileReader& read_include) {
  HbaRules rules;
  rules.path = path;
  Parser p(read_include, rules);
  Status st = p.parseFile(text, path);
  if (!st) return st;
  return rules;
}

Result<HbaRules> loadHba(const std::string& path) {
  auto read = [](const std::string& p, std::string* why) -> std::optional<std::string> {
    std::ifstream f(p, std::ios::binary);
    if (!f) {
      *why = std::strerror(errno);
      return std::nullopt;
    }
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  std::string why;
  auto text = read(path, &why);
  if (!text) return Status::error(fmt::format("auth_hba_file: cannot read \"{}\": {}", path, why));
  return parseHba(*text, path, read);
}

const HbaRule* matchHba(const HbaRules& rules, const HbaConnection& c) {
  for (const auto& r : rules.rules) {
    switch (r.type) {
      case HbaConnType::kLocal:
        if (!c.local) continue;
        break;
      case HbaConnType::kHost:
        if (c.local) continue;
        break;
      case HbaConnType::kHostSsl:
        if (c.local || !c.tls) continue;
        break;
      case HbaConnType::kHostNoSsl:
        if (c.local || c.tls) continue;
        break;
      case HbaConnType::kHostGssEnc:
      case HbaConnType::kHostNoGssEnc:
        continue;  // sluice offers no GSSAPI encryption
    }
    if (!c.local && !r.any_address) {
      if (r.family != c.family) continue;
      bool in = true;
      size_t len = r.family == AF_INET ? 4 : 16;
      for (size_t i = 0; i < len; ++i) {
        if ((c.addr[i] & r.mask[i]) != r.addr[i]) {
          in = false;
          break;
        }
      }
      if (!in) continue;
    }
    if (!nameMatches(r.databases, c.database, c.user)) continue;
    if (!nameMatches(r.users, c.user, c.user)) continue;
    return &r;
  }
  return nullptr;
}

HbaVerdict hbaVerdict(const HbaRule* rule, const HbaConnection& c, std::string_view cert_cn,
                      std::string_view peer_user) {
  HbaVerdict v;
  if (!rule) {
    v.error = hbaNoMatchMessage(c);
    return v;
  }
  for (const auto& [name, value] : rule->options) {
    // clientcert=verify-ca|verify-full on a password line: the certificate is required as well.
    if (name != "clientcert" || rule->method == HbaMethod::kCert) continue;
    if (!c.tls || !c.cert_verified) {
      v.error = "connection requires a valid client certificate";
      return v;
    }
    if (value == "verify-full" && !protocol::constantTimeEquals(cert_cn, c.user)) {
      v.error = "certificate validation (clientcert=verify-full) failed for user \"" + c.user +
                "\": CN mismatch";
      return v;
    }
  }
  switch (rule->method) {
    case HbaMethod::kTrust:
      v.type = config::AuthType::kTrust;
      break;
    case HbaMethod::kMd5:
      v.type = config::AuthType::kMd5;
      break;
    case HbaMethod::kPassword:
      v.type = config::AuthType::kPlain;
      break;
    case HbaMethod::kScramSha256:
      v.type = config::AuthType::kScramSha256;
      break;
    case HbaMethod::kReject:
      v.error = hbaRejectMessage(c);
      break;
    case HbaMethod::kCert:
      // The certificate is the proof; its CN must be the user name (there are no maps).
      if (!c.tls || cert_cn.empty()) {
        v.error = "connection requires a valid client certificate";
      } else if (!protocol::constantTimeEquals(cert_cn, c.user)) {
        v.error = "certificate authentication failed for user \"" + c.user + "\"";
      } else {
        v.type = config::AuthType::kAny;
      }
      break;
    case HbaMethod::kPeer:
      if (!c.local || peer_user.empty() || peer_user != c.user) {
        v.error = "Peer authentication failed for user \"" + c.user + "\"";
      } else {
        v.type = config::AuthType::kAny;
      }
      break;
  }
  return v;
}

std::string hbaHostText(const HbaConnection& c) {
  if (c.local) return "[local]";
  char buf[INET6_ADDRSTRLEN] = {0};
  inet_ntop(c.family, c.addr.data(), buf, sizeof(buf));
  return buf;
}

std::string hbaNoMatchMessage(const HbaConnection& c) {
  return fmt::format("no pg_hba.conf entry for host \"{}\", user \"{}\", database \"{}\", {}",
                     hbaHostText(c), c.user, c.database, encryptionText(c));
}

std::string hbaRejectMessage(const HbaConnection& c) {
  return fmt::format(
      "pg_hba.conf rejects connection for host \"{}\", user \"{}\", database \"{}\", {}",
      hbaHostText(c), c.user, c.database, encryptionText(c));
}

bool hbaSetAddress(HbaConnection& c, const void* sa, unsigned len) {
  const auto* s = static_cast<const sockaddr*>(sa);
  c.addr.fill(0);
  if (s->sa_family == AF_INET && len >= sizeof(sockaddr_in)) {
    const auto* in = static_cast<const sockaddr_in*>(sa);
    c.family = AF_INET;
    std::memcpy(c.addr.data(), &in->sin_addr, 4);
    return true;
  }
  if (s->sa_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
    const auto* in6 = static_cast<const sockaddr_in6*>(sa);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      c.family = AF_INET;
      std::memcpy(c.addr.data(), &in6->sin6_addr.s6_addr[12], 4);
    } else {
      c.family = AF_INET6;
      std::memcpy(c.addr.data(), &in6->sin6_addr, 16);
    }
    return true;
  }
  return false;
}

}  // namespace sluice::auth
