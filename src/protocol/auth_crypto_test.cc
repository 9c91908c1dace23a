#include "protocol/auth_crypto.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sluice::protocol {
namespace {

// RFC 7677 section 3.
constexpr std::string_view kRfcClientNonce = "rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr std::string_view kRfcSalt = "W22ZaJ0SNY7soEsUEjb6gQ==";
constexpr std::string_view kRfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view kRfcClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
// (The RFC's value; also recomputed with python3 hmac.)
constexpr std::string_view kRfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
// The same secret as PostgreSQL would store it, computed with python3 hashlib/hmac.
constexpr std::string_view kPencilSecret =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
constexpr std::string_view kPencilClientKeyHex =
    "a60fc923d67e8644a92d16b96eda5ef4656b0c725c484374be25535576996e8b";

std::string hex(const ScramKey& key) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : key) {
    out += kHex[b >> 4];
    out += kHex[b & 0xf];
  }
  return out;
}

// Parsed rather than derived: no PBKDF2 per use (ScramSecretMatchesPostgresFormat checks both
// agree).
ScramSecret pencilSecret() { return *parseScramSecret(kPencilSecret); }

ScramKey pencilClientKey() {
  std::string raw = *base64Decode("pg/JI9Z+hkSpLRa5btpe9GVrDHJcSEN0viVTVXaZbos=");
  ScramKey key;
  std::copy(raw.begin(), raw.end(), key.begin());
  return key;
}

// Runs a whole exchange; returns the server's error, or "" on success of both sides.
std::string exchange(ScramClient& client, ScramServer& server) {
  Result<std::string> server_first = server.handleClientFirst(client.clientFirst());
  if (!server_first) return server_first.message();
  Result<std::string> client_final = client.handleServerFirst(*server_first);
  if (!client_final) return client_final.message();
  Result<std::string> server_final = server.handleClientFinal(*client_final);
  if (!server_final) return server_final.message();
  Status status = client.handleServerFinal(*server_final);
  return status.isOk() ? "" : status.message();
}

TEST(AuthCryptoTest, Md5Hex) {
  EXPECT_EQ(md5Hex(""), "d41d8cd98f00b204e9800998ecf8427e");
  EXPECT_EQ(md5Hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
}

TEST(AuthCryptoTest, Md5PasswordSecretAndSaltedResponse) {
  // Vectors from python3 hashlib.
  EXPECT_EQ(md5PasswordSecret("postgres", "postgres"), "md53175bce1d3201d16594cebf9d7eb3f9d");
  EXPECT_EQ(md5PasswordSecret("alice", "secret"), "md54a0a68b43b6cd5cf266fa02f196e2371");
  const uint8_t salt1[4] = {0x01, 0x02, 0x03, 0x04};
  EXPECT_EQ(md5SaltedResponse("md53175bce1d3201d16594cebf9d7eb3f9d", salt1),
            "md568be9ed08db75f318087ab337aaea044");
  const uint8_t salt2[4] = {0xde, 0xad, 0xbe, 0xef};
  EXPECT_EQ(md5SaltedResponse(md5PasswordSecret("alice", "secret"), salt2),
            "md53e1d73ba00a55e8805aa0277d29996c5");
}

TEST(AuthCryptoTest, ConstantTimeEqualsAndRandomBytes) {
  EXPECT_TRUE(constantTimeEquals("", ""));
  EXPECT_TRUE(constantTimeEquals("abc", "abc"));
  EXPECT_FALSE(constantTimeEquals("abc", "abd"));
  EXPECT_FALSE(constantTimeEquals("abc", "abcd"));
  EXPECT_EQ(randomBytes(0), "");
  EXPECT_EQ(randomBytes(18).size(), 18u);
  EXPECT_NE(randomBytes(32), randomBytes(32));
}

TEST(AuthCryptoTest, Base64) {
  EXPECT_EQ(base64Encode(""), "");
  EXPECT_EQ(base64Encode("n,,"), "biws");
  EXPECT_EQ(base64Encode("ab"), "YWI=");
  EXPECT_EQ(base64Encode("a"), "YQ==");
  EXPECT_EQ(base64Decode("YWI="), "ab");
  EXPECT_EQ(base64Decode("YQ=="), "a");
  EXPECT_EQ(base64Decode(""), "");
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  EXPECT_EQ(base64Decode(base64Encode(all)), all);
  for (std::string_view bad : {"YQ", "YQ=", "Y===", "====", "YW I", "YQ==YQ==", "Y\nQ=", "YW*="}) {
    EXPECT_EQ(base64Decode(bad), std::nullopt) << bad;
  }
}

TEST(AuthCryptoTest, ScramSecretMatchesPostgresFormat) {
  ScramSecret secret = scramSecretFromPassword("pencil", *base64Decode(kRfcSalt), 4096);
  EXPECT_EQ(secret.toString(), kPencilSecret);

  // A secret built independently with python3 (password "hunter2", 10000 iterations).
  std::string text =
      "SCRAM-SHA-256$10000:MDEyMzQ1Njc4OWFiY2RlZg==$rvWynJWfSpfXnjZ5hOrj0CoX3Cdk8w/Firus6nVHY/U=:"
      "C7upQnM5OqkVKSL4J1lFDy5ptIT9F+MGWUVxPrjAQIA=";
  std::optional<ScramSecret> parsed = parseScramSecret(text);
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->iterations, 10000);
  EXPECT_EQ(parsed->salt, "0123456789abcdef");
  ScramSecret derived = scramSecretFromPassword("hunter2", "0123456789abcdef", 10000);
  EXPECT_EQ(parsed->stored_key, derived.stored_key);
  EXPECT_EQ(parsed->server_key, derived.server_key);
  EXPECT_EQ(parsed->toString(), text);
}

TEST(AuthCryptoTest, ParseScramSecretRejectsMalformed) {
  std::string good(kPencilSecret);
  ASSERT_TRUE(parseScramSecret(good));
  for (std::string bad : {
           std::string(""), std::string("SCRAM-SHA-256$"),
           std::string("SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==$a:b"),
           good.substr(0, good.size() - 1),                               // truncated key
           good + "AAAA",                                                 // key too long
           good + "$x",                                                   // trailing field
           "SCRAM-SHA-256$0:" + good.substr(19),                          // zero iterations
           "SCRAM-SHA-256$-1:" + good.substr(19),                         // negative iterations
           "SCRAM-SHA-256$x:" + good.substr(19),                          // not a number
           "SCRAM-SHA-256$99999999999:" + good.substr(19),                // overflows int
           "SCRAM-SHA-256$4096:$" + good.substr(good.find('$', 14) + 1),  // empty salt
           "SCRAM-SHA-256$4096" + good.substr(good.find('$', 14)),        // no salt field
       }) {
    EXPECT_EQ(parseScramSecret(bad), std::nullopt) << bad;
  }
}

TEST(AuthCryptoTest, SecretKind) {
  EXPECT_EQ(secretKind("md53175bce1d3201d16594cebf9d7eb3f9d"), SecretKind::kMd5);
  EXPECT_EQ(secretKind("md53175BCE1D3201D16594CEBF9D7EB3F9D"), SecretKind::kPlain);  // as PG
  EXPECT_EQ(secretKind("md53175bce1d3201d16594cebf9d7eb3f9"), SecretKind::kPlain);
  EXPECT_EQ(secretKind("md5xyz"), SecretKind::kPlain);
  EXPECT_EQ(secretKind(kPencilSecret), SecretKind::kScram);
  EXPECT_EQ(secretKind("SCRAM-SHA-256$4096:bad"), SecretKind::kPlain);
  EXPECT_EQ(secretKind("hunter2"), SecretKind::kPlain);
  EXPECT_EQ(secretKind(""), SecretKind::kPlain);
}

TEST(AuthCryptoTest, ScramServerRfc7677Vector) {
  ScramServer server(*parseScramSecret(kPencilSecret));
  server.setNonceForTest(std::string(kRfcServerNonce));
  Result<std::string> server_first = server.handleClientFirst(kRfcClientFirst);
  ASSERT_TRUE(server_first) << server_first.message();
  EXPECT_EQ(*server_first, kRfcServerFirst);
  EXPECT_FALSE(server.clientKey());
  Result<std::string> server_final = server.handleClientFinal(kRfcClientFinal);
  ASSERT_TRUE(server_final) << server_final.message();
  EXPECT_EQ(*server_final, kRfcServerFinal);
  ASSERT_TRUE(server.clientKey());
  EXPECT_EQ(hex(*server.clientKey()), kPencilClientKeyHex);
  // Used up: a replayed final is an error, not a second success.
  EXPECT_FALSE(server.handleClientFinal(kRfcClientFinal));
}

TEST(AuthCryptoTest, ScramClientRfc7677Vector) {
  ScramClient client = ScramClient::fromPassword("pencil");
  client.setNonceForTest(std::string(kRfcClientNonce), "user");
  EXPECT_EQ(client.clientFirst(), kRfcClientFirst);
  Result<std::string> client_final = client.handleServerFirst(kRfcServerFirst);
  ASSERT_TRUE(client_final) << client_final.message();
  EXPECT_EQ(*client_final, kRfcClientFinal);
  EXPECT_TRUE(client.handleServerFinal(kRfcServerFinal).isOk());
}

TEST(AuthCryptoTest, ScramClientFromKeysRfc7677Vector) {
  ScramKey client_key = pencilClientKey();
  ASSERT_EQ(hex(client_key), kPencilClientKeyHex);
  ScramClient client = ScramClient::fromKeys(client_key, pencilSecret().server_key);
  client.setNonceForTest(std::string(kRfcClientNonce), "user");
  client.clientFirst();
  Result<std::string> client_final = client.handleServerFirst(kRfcServerFirst);
  ASSERT_TRUE(client_final) << client_final.message();
  EXPECT_EQ(*client_final, kRfcClientFinal);
  EXPECT_TRUE(client.handleServerFinal(kRfcServerFinal).isOk());
}

TEST(AuthCryptoTest, ScramRoundTripFromPasswordThenFromKeys) {
  ScramSecret secret = scramSecretFromPassword("correct horse", randomBytes(16), 4096);
  ScramServer server(secret);
  ScramClient client = ScramClient::fromPassword("correct horse");
  std::string first = client.clientFirst();
  EXPECT_TRUE(first.starts_with("n,,n=,r=")) << first;
  EXPECT_EQ(first.size(), 8u + 24u);  // 18 random bytes in base64
  ASSERT_EQ(exchange(client, server), "");
  ASSERT_TRUE(server.clientKey());

  // Sluice logs into "PostgreSQL" (which holds the same secret) with the recovered ClientKey.
  ScramServer postgres(secret);
  ScramClient relay = ScramClient::fromKeys(*server.clientKey(), secret.server_key);
  EXPECT_EQ(exchange(relay, postgres), "");
  EXPECT_EQ(postgres.clientKey(), server.clientKey());

  // ... but not into one whose secret has another salt, even for the same password.
  ScramServer other(scramSecretFromPassword("correct horse", "another salt", 4096));
  ScramClient relay2 = ScramClient::fromKeys(*server.clientKey(), secret.server_key);
  EXPECT_NE(exchange(relay2, other), "");
  EXPECT_TRUE(other.authFailed());
}

TEST(AuthCryptoTest, ScramAcceptsGs2HeaderY) {
  ScramServer server(pencilSecret());
  ASSERT_TRUE(server.handleClientFirst("y,,n=someone,r=abc"));
  // c= must echo "y,," (eSws), not "n,,".
  ScramServer server2(pencilSecret());
  ASSERT_TRUE(server2.handleClientFirst("y,,n=,r=abc"));
  Result<std::string> r =
      server2.handleClientFinal("c=biws,r=abc,p=" + base64Encode(std::string(32, 'x')));
  EXPECT_FALSE(r);
  EXPECT_FALSE(server2.authFailed());  // malformed, not a wrong password
}

TEST(AuthCryptoTest, ScramWrongPasswordRejected) {
  ScramServer server(pencilSecret());
  ScramClient client = ScramClient::fromPassword("pencil2");
  std::string error = exchange(client, server);
  EXPECT_NE(error.find("invalid client proof"), std::string::npos) << error;
  EXPECT_TRUE(server.authFailed());
  EXPECT_FALSE(server.clientKey());
}

TEST(AuthCryptoTest, ScramTamperedNonceRejected) {
  // Server: final nonce differs from the one it issued.
  ScramServer server(pencilSecret());
  server.setNonceForTest(std::string(kRfcServerNonce));
  ASSERT_TRUE(server.handleClientFirst(kRfcClientFirst));
  std::string tampered(kRfcClientFinal);
  tampered[12] ^= 1;  // inside r=
  Result<std::string> r = server.handleClientFinal(tampered);
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("nonce"), std::string::npos) << r.message();
  EXPECT_TRUE(server.authFailed());
  EXPECT_FALSE(server.clientKey());

  // Client: server nonce must extend the client's nonce.
  for (std::string_view server_first :
       {"r=XOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=rOprNGfwEbeRWgbNEkq,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"}) {
    ScramClient client = ScramClient::fromPassword("pencil");
    client.setNonceForTest(std::string(kRfcClientNonce));
    client.clientFirst();
    EXPECT_FALSE(client.handleServerFirst(server_first)) << server_first;
  }
}

TEST(AuthCryptoTest, ScramServerRejectsMalformedClientFirst) {
  struct Case {
    std::string_view msg;
    std::string_view error;
  };
  for (Case c : std::vector<Case>{
           {"p=tls-server-end-point,,n=,r=abc", "channel binding"},
           {"n,a=admin,n=,r=abc", "authorization identity"},
           {"n,,m=ext,n=,r=abc", "mandatory extension"},
           {"n,,n=,r=", "bad nonce"},
           {"n,,n=,r=a\x01", "bad nonce"},
           {"n,,n=", "expected n= and r="},
           {"n,,r=abc,n=", "expected n= and r="},
           {"x,,n=,r=abc", "gs2 header"},
           {"n,", "gs2 header"},
           {"n,x,n=,r=abc", "gs2 header"},
       }) {
    ScramServer server(pencilSecret());
    Result<std::string> r = server.handleClientFirst(c.msg);
    ASSERT_FALSE(r) << c.msg;
    EXPECT_NE(r.message().find(c.error), std::string::npos) << c.msg << ": " << r.message();
    EXPECT_FALSE(server.authFailed());
  }
}

TEST(AuthCryptoTest, ScramServerRejectsMalformedClientFinal) {
  std::string proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
  std::string nonce = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
  for (std::string msg : {
           "c=biws," + nonce,                              // no proof
           nonce + ",c=biws," + proof,                     // wrong order
           "c=biws," + nonce + "," + proof + ",x=1",       // proof not last
           "c=biws," + nonce + "," + proof + "," + proof,  // two proofs
           "c=eSws," + nonce + "," + proof,                // cbind "y,," but we saw "n,,"
           "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws," + nonce + "," + proof,
           "c=biws," + nonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndQ==",  // 31 bytes
           "c=biws," + nonce + ",p=not base64!",
       }) {
    ScramServer server(pencilSecret());
    server.setNonceForTest(std::string(kRfcServerNonce));
    ASSERT_TRUE(server.handleClientFirst(kRfcClientFirst));
    EXPECT_FALSE(server.handleClientFinal(msg)) << msg;
    EXPECT_FALSE(server.authFailed()) << msg;
  }
  // Extensions between r= and p= are ignored, as PostgreSQL does, but they are part of the
  // AuthMessage, so the RFC proof no longer matches: a wrong proof, not a malformed message.
  ScramServer server(pencilSecret());
  server.setNonceForTest(std::string(kRfcServerNonce));
  ASSERT_TRUE(server.handleClientFirst(kRfcClientFirst));
  EXPECT_FALSE(server.handleClientFinal("c=biws," + nonce + ",x=ext," + proof));
  EXPECT_TRUE(server.authFailed());
}

TEST(AuthCryptoTest, ScramClientHandlesServerFinal) {
  auto ready = [] {
    ScramClient client = ScramClient::fromPassword("pencil");
    client.setNonceForTest(std::string(kRfcClientNonce), "user");
    client.clientFirst();
    EXPECT_TRUE(client.handleServerFirst(kRfcServerFirst));
    return client;
  };
  ScramClient client = ready();
  Status s = client.handleServerFinal("e=invalid-proof");
  ASSERT_FALSE(s.isOk());
  EXPECT_NE(s.message().find("invalid-proof"), std::string::npos) << s.message();

  std::string wrong(kRfcServerFinal);
  wrong[3] = wrong[3] == 'A' ? 'B' : 'A';
  for (std::string_view msg :
       {std::string_view(wrong), std::string_view("v="),
        std::string_view("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,x=1"),
        std::string_view("x=1"), std::string_view("")}) {
    ScramClient c = ready();
    EXPECT_FALSE(c.handleServerFinal(msg).isOk()) << msg;
  }
}

TEST(AuthCryptoTest, ScramClientRejectsMalformedServerFirst) {
  for (std::string_view msg :
       {"", "r=rOprNGfwEbeRWgbNEkqOxyz", "m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=QUJD,i=1",
        "r=rOprNGfwEbeRWgbNEkqOxyz,s=QUJD,i=0", "r=rOprNGfwEbeRWgbNEkqOxyz,s=QUJD,i=-5",
        "r=rOprNGfwEbeRWgbNEkqOxyz,s=QUJD,i=4096x", "r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096",
        "r=rOprNGfwEbeRWgbNEkqOxyz,s=QUJ,i=4096", "r=rOprNGfwEbeRWgbNEkqOxyz,s=QUJD,i=1,x=y",
        "s=QUJD,r=rOprNGfwEbeRWgbNEkqOxyz,i=1", "r=rOprNGfwEbeRWgbNEkqOx\x7f,s=QUJD,i=1"}) {
    ScramClient client = ScramClient::fromPassword("pencil");
    client.setNonceForTest(std::string(kRfcClientNonce));
    client.clientFirst();
    EXPECT_FALSE(client.handleServerFirst(msg)) << msg;
  }
}

TEST(AuthCryptoTest, ScramOutOfOrderAndGarbageNeverCrash) {
  std::vector<std::string> garbage = {"",
                                      ",",
                                      ",,",
                                      "=",
                                      "n",
                                      "n,,",
                                      "n,,n",
                                      "n,,,",
                                      "r=,",
                                      "c=,r=,p=",
                                      "p=",
                                      "\0\0\0",
                                      "e=",
                                      "v=",
                                      "a=b,",
                                      std::string(10000, 'A'),
                                      std::string("n,,n=\0,r=a\0", 11)};
  // Every prefix of the valid messages, and every single-byte corruption of them.
  for (std::string_view valid :
       {kRfcClientFirst, kRfcClientFinal, kRfcServerFirst, kRfcServerFinal}) {
    for (size_t i = 0; i < valid.size(); ++i) {
      garbage.emplace_back(valid.substr(0, i));
      std::string corrupt(valid);
      corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5a);
      garbage.push_back(corrupt);
    }
  }
  for (const std::string& g : garbage) {
    ScramServer server(pencilSecret());
    server.setNonceForTest(std::string(kRfcServerNonce));
    (void)server.handleClientFirst(g);
    (void)server.handleClientFinal(g);

    ScramServer server2(pencilSecret());
    server2.setNonceForTest(std::string(kRfcServerNonce));
    ASSERT_TRUE(server2.handleClientFirst(kRfcClientFirst));
    if (g != kRfcClientFinal) {
      EXPECT_FALSE(server2.handleClientFinal(g)) << g;
    }

    ScramClient client = ScramClient::fromKeys(pencilClientKey(), pencilSecret().server_key);
    EXPECT_FALSE(client.handleServerFirst(g)) << g;  // before clientFirst
    client.setNonceForTest(std::string(kRfcClientNonce), "user");
    client.clientFirst();
    if (g != kRfcServerFirst && client.handleServerFirst(g)) {
      // Only a valid-looking server-first with another salt/iterations can get here.
      EXPECT_FALSE(client.handleServerFinal(kRfcServerFinal).isOk()) << g;
    }
    ScramClient client2 = ScramClient::fromKeys(pencilClientKey(), pencilSecret().server_key);
    client2.setNonceForTest(std::string(kRfcClientNonce), "user");
    client2.clientFirst();
    ASSERT_TRUE(client2.handleServerFirst(kRfcServerFirst));
    if (g != kRfcServerFinal) {
      EXPECT_FALSE(client2.handleServerFinal(g).isOk()) << g;
    }
  }
}

TEST(AuthCryptoTest, ScramClientEscapesUserName) {
  ScramClient client = ScramClient::fromPassword("x");
  client.setNonceForTest("abc", "a,b=c");
  EXPECT_EQ(client.clientFirst(), "n,,n=a=2Cb=3Dc,r=abc");
  EXPECT_EQ(client.clientFirst(), "n,,n=a=2Cb=3Dc,r=abc");  // idempotent
}

}  // namespace
}  // namespace sluice::protocol
