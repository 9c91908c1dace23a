// ClientAuth: the authentication exchange with one client, as a pure state machine: it is fed
// the payloads of the client's PasswordMessage/SASL messages and returns the bytes to send.
// No I/O; owned by one ClientSession; not thread-safe.
//
// Unknown users and wrong passwords fail identically (same exchange, same 28P01 message), so a
// client cannot tell whether a user exists. Comparisons are constant-time.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "config/config.h"
#include "protocol/auth_crypto.h"
#include "protocol/wire.h"

namespace sluice::auth {

class ClientAuth {
 public:
  enum class Outcome { kContinue, kOk, kFailed };
  struct Step {
    Outcome outcome = Outcome::kContinue;
    std::string out;            // messages to send to the client (requests or final error)
    protocol::ErrorInfo error;  // when kFailed
  };

  // `secret` is the user's auth_file/[databases] secret, nullptr if unknown.
  ClientAuth(config::AuthType type, std::string user, const std::string* secret);
  ~ClientAuth();

  // With auth_type md5, whether an unknown user runs the mock exchange as SCRAM (when the
  // known users' secrets are mostly SCRAM, an md5 request would tell the user is unknown).
  void setUnknownUserScram(bool scram) { unknown_as_scram_ = scram; }

  Step start();
  Step onPasswordMessage(std::string_view payload);

  // After a successful SCRAM exchange: the ClientKey from the proof (used for server login).
  std::optional<protocol::ScramKey> scramClientKey() const;

 private:
  enum class Method { kNone, kCleartext, kMd5, kScram };
  Step fail(const std::string& sqlstate, const std::string& message);
  Step ok();

  config::AuthType type_;
  std::string user_;
  std::optional<std::string> secret_;
  Method method_ = Method::kNone;
  uint8_t salt_[4] = {0, 0, 0, 0};
  std::optional<protocol::ScramServer> scram_;
  bool scram_first_done_ = false;
  bool unknown_as_scram_ = false;
};

}  // namespace sluice::auth
