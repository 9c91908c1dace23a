// Fuzz target: arbitrary bytes as an auth_file (userlist.txt) through config::parseUserList.
// Every rejection must be a ConfigError; every user found has a secret that secretKind() can
// classify and find() returns it.
#include <cstddef>
#include <cstdint>
#include <string>

#include "config/config.h"
#include "fuzz_util.h"
#include "protocol/auth_crypto.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  std::string text(reinterpret_cast<const char*>(data), size);
  config::UserList list;
  try {
    list = config::parseUserList(text, "/nonexistent/sluice-fuzz/userlist.txt");
  } catch (const config::ConfigError&) {
    return 0;
  }
  for (const auto& [user, secret] : list.secrets) {
    fuzz::check(list.find(user) == &secret, "UserList::find misses a user");
    (void)protocol::secretKind(secret);
  }
  return 0;
}
