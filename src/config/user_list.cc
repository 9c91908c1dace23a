// PgBouncer's auth_file format (userlist.txt).
#include <string>
#include <string_view>

#include "config/config.h"
#include "config/text_util.h"
#include "protocol/auth_crypto.h"

namespace sluice::config {

const std::string* UserList::find(const std::string& user) const {
  auto it = secrets.find(user);
  return it == secrets.end() ? nullptr : &it->second;
}

UserList parseUserList(const std::string& text, const std::string& path) {
  UserList list;
  int line_no = 0;
  for (std::string_view raw : splitLines(text)) {
    ++line_no;
    std::string_view line = trim(raw);
    if (line.empty() || line[0] == ';' || line[0] == '#') {
      continue;
    }
    size_t i = 0;
    std::optional<std::string> user = readDoubleQuoted(line, i);
    while (user && i < line.size() && isSpace(line[i])) {
      ++i;
    }
    std::optional<std::string> secret = user ? readDoubleQuoted(line, i) : std::nullopt;
    // Like PgBouncer, whatever follows the secret on the line is ignored.
    if (!secret) {
      throw ConfigError(path + ":" + std::to_string(line_no) +
                        ": malformed line, expected \"user\" \"secret\"");
    }
    if (user->empty()) {
      throw ConfigError(path + ":" + std::to_string(line_no) + ": empty user name");
    }
    list.secrets[*user] = *secret;  // a later line for the same user wins, as in PgBouncer
  }
  for (const auto& [u, sec] : list.secrets) {
    switch (protocol::secretKind(sec)) {
      case protocol::SecretKind::kScram:
        ++list.scram_secrets;
        break;
      case protocol::SecretKind::kMd5:
        ++list.md5_secrets;
        break;
      case protocol::SecretKind::kPlain:
        break;
    }
  }
  return list;
}

UserList loadUserList(const std::string& path) {
  return parseUserList(readTextFile(path, "auth_file: "), path);
}

}  // namespace sluice::config
