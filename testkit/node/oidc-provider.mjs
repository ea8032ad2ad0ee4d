// A real OIDC provider for the tests: oauth2-mock-server (npm, pinned in package.json).
// Usage: node oidc-provider.mjs PORT
// Prints "ready ISSUER_URL KID" once it listens. Commands on stdin, one JSON object a line:
//   {"claims": {...}}   claims added to every token it signs from now on (roles, organisation, ...)
//   {"rotate": true}    a new signing key (published in the JWKS next to the old one and used
//                       for the next token); answers "rotated KID"
// A token request may carry extra claims for that token only: the form field `claims` (JSON).
import { OAuth2Server } from 'oauth2-mock-server';
import readline from 'node:readline';

const port = Number(process.argv[2]);
const server = new OAuth2Server();
let key = await server.issuer.keys.generate('RS256');
let extra = {};

server.service.on('beforeTokenSigning', (token, req) => {
  Object.assign(token.payload, extra);
  const perRequest = req.body && req.body.claims;
  if (perRequest) Object.assign(token.payload, JSON.parse(perRequest));
});

server.issuer.url = `http://127.0.0.1:${port}`;
await server.start(port, '127.0.0.1');
console.log(`ready ${server.issuer.url} ${key.kid}`);

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', async (line) => {
  const command = JSON.parse(line);
  if (command.claims) {
    extra = command.claims;
    console.log('claims');
  }
  if (command.rotate) {
    const old = key;
    key = await server.issuer.keys.generate('RS256');
    server.issuer.keys.get(old.kid); // the rotator signs with the first key: the new one
    console.log(`rotated ${key.kid}`);
  }
});
lines.on('close', async () => {
  await server.stop();
  process.exit(0);
});
