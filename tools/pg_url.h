// PgUrl: a libpq-style connection URL, postgres://user:password@host:port/dbname?key=value,
// parsed for the tools. Pure, a value type.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace sluice::tools {

struct PgUrl {
  std::string user;
  std::string password;
  std::string host = "localhost";  // "/dir": unix socket in dir (also from ?host=/dir)
  int port = 5432;
  std::string dbname;  // defaults to user
  // Query parameters passed on as startup parameters (application_name, options, ...).
  std::vector<std::pair<std::string, std::string>> params;

  // The URL without its password, for output.
  std::string redacted() const;
};

// Accepts postgres:// and postgresql://; percent-decodes every part; IPv6 hosts in brackets.
// `default_user` fills a missing user. sslmode=disable|allow|prefer is accepted and means no
// TLS; require and stronger are refused (the tools do not speak TLS). Errors name the part.
Result<PgUrl> parsePgUrl(std::string_view url, std::string_view default_user = "");

}  // namespace sluice::tools
