#include "auth/client_auth.h"

#include <cstring>

#include "protocol/sqlstate.h"

namespace sluice::auth {

using protocol::SecretKind;

ClientAuth::ClientAuth(config::AuthType type, std::string user, const std::string* secret)
    : type_(type), user_(std::move(user)) {
  if (secret) secret_ = *secret;
}

ClientAuth::~ClientAuth() = default;

ClientAuth::Step ClientAuth::ok() {
  Step s;
  s.outcome = Outcome::kOk;
  protocol::appendAuthRequest(s.out, protocol::kAuthOk);
  return s;
}

ClientAuth::Step ClientAuth::fail(const std::string& sqlstate, const std::string& message) {
  Step s;
  s.outcome = Outcome::kFailed;
  s.error.severity = "FATAL";
  s.error.sqlstate = sqlstate;
  s.error.message = message;
  protocol::appendError(s.out, s.error);
  return s;
}

ClientAuth::Step ClientAuth::start() {
  using config::AuthType;
  switch (type_) {
    case AuthType::kTrust:
    case AuthType::kAny:
      return ok();
    case AuthType::kPlain:
      method_ = Method::kCleartext;
      break;
    case AuthType::kMd5:
      // PgBouncer's rule: md5 auth with a SCRAM secret on file upgrades to SCRAM. An unknown
      // user gets what most users would get (PostgreSQL's mock follows password_encryption).
      method_ = secret_ ? (protocol::secretKind(*secret_) == SecretKind::kScram ? Method::kScram
                                                                                : Method::kMd5)
                        : (unknown_as_scram_ ? Method::kScram : Method::kMd5);
      break;
    case AuthType::kScramSha256:
      method_ = Method::kScram;
      break;
    case AuthType::kCert:
    case AuthType::kHba:
      return fail(sqlstate::kFeatureNotSupported,
                  std::string("sluice: auth_type ") + config::authTypeName(type_) +
                      " is not supported yet; use trust, plain, md5 or scram-sha-256");
  }
  Step s;
  switch (method_) {
    case Method::kCleartext:
      protocol::appendAuthRequest(s.out, protocol::kAuthCleartext);
      break;
    case Method::kMd5: {
      std::string salt = protocol::randomBytes(4);
      std::memcpy(salt_, salt.data(), 4);
      protocol::appendAuthRequest(s.out, protocol::kAuthMd5, salt);
      break;
    }
    case Method::kScram: {
      std::string mechs("SCRAM-SHA-256\0\0", 15);
      protocol::appendAuthRequest(s.out, protocol::kAuthSasl, mechs);
      break;
    }
    case Method::kNone:
      break;
  }
  return s;
}

ClientAuth::Step ClientAuth::onPasswordMessage(std::string_view payload) {
  const std::string bad_password = "password authentication failed for user \"" + user_ + "\"";
  switch (method_) {
    case Method::kCleartext: {
      protocol::Reader r(payload);
      std::string_view pw = r.cstring();
      if (r.failed()) return fail(sqlstate::kProtocolViolation, "invalid password packet");
      bool good = false;
      if (secret_) {
        switch (protocol::secretKind(*secret_)) {
          case SecretKind::kPlain:
            good = protocol::constantTimeEquals(pw, *secret_);
            break;
          case SecretKind::kMd5:
            good = protocol::constantTimeEquals(protocol::md5PasswordSecret(user_, pw), *secret_);
            break;
          case SecretKind::kScram: {
            auto sec = protocol::parseScramSecret(*secret_);
            auto mine = protocol::scramSecretFromPassword(pw, sec->salt, sec->iterations);
            good = protocol::constantTimeEquals(
                std::string_view(reinterpret_cast<const char*>(mine.stored_key.data()), 32),
                std::string_view(reinterpret_cast<const char*>(sec->stored_key.data()), 32));
            break;
          }
        }
      }
      return good ? ok() : fail(sqlstate::kInvalidPassword, bad_password);
    }
    case Method::kMd5: {
      protocol::Reader r(payload);
      std::string_view got = r.cstring();
      if (r.failed()) return fail(sqlstate::kProtocolViolation, "invalid password packet");
      std::string expected_secret;
      if (secret_) {
        expected_secret = protocol::secretKind(*secret_) == SecretKind::kPlain
                              ? protocol::md5PasswordSecret(user_, *secret_)
                              : *secret_;
      } else {
        expected_secret = "md5" + protocol::md5Hex(protocol::randomBytes(16));  // never matches
      }
      std::string expected = protocol::md5SaltedResponse(expected_secret, salt_);
      return protocol::constantTimeEquals(got, expected)
                 ? ok()
                 : fail(sqlstate::kInvalidPassword, bad_password);
    }
    case Method::kScram: {
      if (!scram_first_done_) {
        scram_first_done_ = true;
        protocol::Reader r(payload);
        std::string_view mech = r.cstring();
        int32_t len = r.int32();
        if (r.failed() || mech != "SCRAM-SHA-256") {
          return fail(sqlstate::kProtocolViolation,
                      "client selected an invalid SASL authentication mechanism");
        }
        std::string_view data = r.rest();
        if (len >= 0 && size_t(len) <= data.size()) data = data.substr(0, size_t(len));
        // A user without a usable secret runs the same exchange against a random secret.
        std::optional<protocol::ScramSecret> secret;
        if (secret_) {
          switch (protocol::secretKind(*secret_)) {
            case SecretKind::kScram:
              secret = protocol::parseScramSecret(*secret_);
              break;
            case SecretKind::kPlain:
              secret = protocol::scramSecretFromPassword(*secret_, protocol::mockScramSalt(user_),
                                                         protocol::kMockScramIterations);
              break;
            case SecretKind::kMd5:
              break;
          }
        }
        if (!secret) {
          // The mock exchange: a salt and iteration count as stable as a real user's, and random
          // keys nobody can know. No PBKDF2 runs, as for a user with a stored SCRAM verifier, so
          // the time to answer does not tell an unknown user either.
          protocol::ScramSecret mock;
          mock.iterations = protocol::kMockScramIterations;
          mock.salt = protocol::mockScramSalt(user_);
          std::string keys = protocol::randomBytes(64);
          std::memcpy(mock.stored_key.data(), keys.data(), 32);
          std::memcpy(mock.server_key.data(), keys.data() + 32, 32);
          secret = std::move(mock);
        }
        scram_.emplace(*secret);
        auto res = scram_->handleClientFirst(data);
        if (!res)
          return fail(sqlstate::kProtocolViolation, "malformed SCRAM message: " + res.message());
        Step s;
        protocol::appendAuthRequest(s.out, protocol::kAuthSaslContinue, *res);
        return s;
      }
      if (!scram_) return fail(sqlstate::kProtocolViolation, "unexpected SASL message");
      auto res = scram_->handleClientFinal(payload);
      if (!res) {
        return scram_->authFailed() ? fail(sqlstate::kInvalidPassword, bad_password)
                                    : fail(sqlstate::kProtocolViolation,
                                           "malformed SCRAM message: " + res.message());
      }
      if (!secret_) return fail(sqlstate::kInvalidPassword, bad_password);
      Step s;
      s.outcome = Outcome::kOk;
      protocol::appendAuthRequest(s.out, protocol::kAuthSaslFinal, *res);
      protocol::appendAuthRequest(s.out, protocol::kAuthOk);
      return s;
    }
    case Method::kNone:
      break;
  }
  return fail(sqlstate::kProtocolViolation, "unexpected password message");
}

std::optional<protocol::ScramKey> ClientAuth::scramClientKey() const {
  if (!scram_) return std::nullopt;
  return scram_->clientKey();
}

}  // namespace sluice::auth
