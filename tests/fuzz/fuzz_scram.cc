// Fuzz target: SCRAM-SHA-256 messages and secrets (protocol/auth_crypto.h) and the client
// authentication state machine that carries them (auth::ClientAuth). The input is split at the
// first three '\n' bytes into up to four parts:
//   part 0: a client-first-message for ScramServer, and a pg_authid-style secret for
//           parseScramSecret / secretKind;
//   part 1: a client-final-message for the same ScramServer (after a successful first step);
//   part 2: a server-first-message for ScramClient (client nonce "client-nonce", password
//           "secret");
//   part 3: the server-final-message for that ScramClient.
// The whole input is also a base64 text (decode, then encode and decode back must agree), and the
// payload of a SASLInitialResponse then a SASLResponse into a ClientAuth with a SCRAM secret, and
// parts 0 and 1 as the PasswordMessages of a ClientAuth of every auth_type and kind of secret.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "auth/client_auth.h"
#include "fuzz_util.h"
#include "protocol/auth_crypto.h"

namespace sluice::fuzz {

// A low iteration count keeps each exchange cheap; the math is the same.
const protocol::ScramSecret& testSecret() {
  static const protocol::ScramSecret s =
      protocol::scramSecretFromPassword("secret", "0123456789abcdef", 16);
  return s;
}

void fuzzServer(std::string_view first, std::string_view final_msg) {
  protocol::ScramServer server(testSecret());
  server.setNonceForTest("server-nonce");
  auto r1 = server.handleClientFirst(first);
  if (!r1.isOk()) return;
  check(r1->find("r=") == 0, "server-first-message does not start with r=");
  auto r2 = server.handleClientFinal(final_msg);
  if (r2.isOk()) {
    check(server.clientKey().has_value(), "successful exchange without a ClientKey");
    check(r2->find("v=") == 0, "server-final-message does not start with v=");
  }
}

void fuzzClient(std::string_view server_first, std::string_view server_final, bool from_password) {
  protocol::ScramClient client =
      from_password ? protocol::ScramClient::fromPassword("secret")
                    : protocol::ScramClient::fromKeys(protocol::ScramKey{}, protocol::ScramKey{});
  client.setNonceForTest("client-nonce");
  std::string first = client.clientFirst();
  check(first == "n,,n=,r=client-nonce", "unexpected client-first-message");
  auto final_msg = client.handleServerFirst(server_first);
  if (!final_msg.isOk()) return;
  check(final_msg->find("c=biws,r=") == 0, "client-final-message does not start with c=biws");
  (void)client.handleServerFinal(server_final);
}

void fuzzSecret(std::string_view text) {
  auto secret = protocol::parseScramSecret(text);
  protocol::SecretKind kind = protocol::secretKind(text);
  if (!secret) {
    check(kind != protocol::SecretKind::kScram, "secretKind says SCRAM but it does not parse");
    return;
  }
  check(kind == protocol::SecretKind::kScram, "parses as SCRAM but secretKind disagrees");
  check(secret->iterations > 0 && !secret->salt.empty(), "parsed secret out of range");
  auto again = protocol::parseScramSecret(secret->toString());
  check(again && again->toString() == secret->toString(), "SCRAM secret does not round-trip");
}

void fuzzBase64(std::string_view text) {
  auto raw = protocol::base64Decode(text);
  if (!raw) return;
  std::string enc = protocol::base64Encode(*raw);
  auto back = protocol::base64Decode(enc);
  check(back && *back == *raw, "base64 does not round-trip");
}

void fuzzClientAuth(std::string_view first, std::string_view final_msg) {
  static const std::string secret = testSecret().toString();
  auth::ClientAuth ca(config::AuthType::kScramSha256, "alice", &secret);
  auto step = ca.start();
  if (step.outcome != auth::ClientAuth::Outcome::kContinue) return;
  // SASLInitialResponse: mechanism, int32 length, client-first-message.
  std::string payload = "SCRAM-SHA-256";
  payload.push_back('\0');
  uint32_t len = uint32_t(first.size());
  payload.push_back(char(len >> 24));
  payload.push_back(char(len >> 16));
  payload.push_back(char(len >> 8));
  payload.push_back(char(len));
  payload.append(first);
  step = ca.onPasswordMessage(payload);
  if (step.outcome != auth::ClientAuth::Outcome::kContinue) return;
  step = ca.onPasswordMessage(final_msg);
  if (step.outcome == auth::ClientAuth::Outcome::kOk) {
    check(ca.scramClientKey().has_value(), "SCRAM login without a ClientKey");
  }
  // Raw payload as the very first message, too (a SASLInitialResponse in any shape).
  auth::ClientAuth raw(config::AuthType::kScramSha256, "alice", &secret);
  if (raw.start().outcome == auth::ClientAuth::Outcome::kContinue) {
    raw.onPasswordMessage(first);
  }
}

// Every auth_type against every kind of secret (and an unknown user), with `payload` as the
// first PasswordMessage: cleartext and md5 answers, and SASL messages where SCRAM is chosen.
void fuzzEveryMethod(std::string_view payload, std::string_view second) {
  static const std::string secrets[] = {"secret", protocol::md5PasswordSecret("alice", "secret"),
                                        testSecret().toString()};
  const config::AuthType types[] = {config::AuthType::kPlain, config::AuthType::kMd5,
                                    config::AuthType::kScramSha256, config::AuthType::kTrust,
                                    config::AuthType::kAny};
  for (config::AuthType type : types) {
    for (int k = 0; k <= 3; ++k) {
      auth::ClientAuth ca(type, "alice", k < 3 ? &secrets[k] : nullptr);
      auto step = ca.start();
      if (step.outcome != auth::ClientAuth::Outcome::kContinue) continue;
      step = ca.onPasswordMessage(payload);
      if (step.outcome == auth::ClientAuth::Outcome::kContinue) step = ca.onPasswordMessage(second);
      if (step.outcome == auth::ClientAuth::Outcome::kFailed) {
        check(!step.error.sqlstate.empty(), "failed login without a SQLSTATE");
      }
    }
  }
}

}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string_view parts[4];
  std::string_view rest = in;
  int found = 0;
  for (; found < 3; ++found) {
    size_t nl = rest.find('\n');
    if (nl == std::string_view::npos) break;
    parts[found] = rest.substr(0, nl);
    rest.remove_prefix(nl + 1);
  }
  parts[found] = rest;
  fuzz::fuzzServer(parts[0], parts[1]);
  fuzz::fuzzClient(parts[2], parts[3], !fuzz::hasLargeIterations(parts[2]));
  fuzz::fuzzSecret(parts[0]);
  fuzz::fuzzBase64(in);
  fuzz::fuzzClientAuth(parts[0], parts[1]);
  fuzz::fuzzEveryMethod(parts[0], parts[1]);
  return 0;
}
