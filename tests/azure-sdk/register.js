#!/usr/bin/env node
// Drives the unmodified Azure IoT device provisioning SDK for Node (npm packages pinned in
// package.json / package-lock.json) against a DPS-compatible endpoint, e.g. kdps.
//
// Usage: node register.js '<JSON options>'
//
//   common:  host (provisioning host; the HTTP transport always dials port 443),
//            idScope, registrationId, payload (optional, any JSON),
//            attestation: "symmetricKey" | "x509" | "tpm" | "tpm-ek"
//   symmetricKey: key (base64 device key) or groupKey (base64; the device key is derived from it
//            as in the SDK's register_symkeygroup.js sample)
//   x509:    certFile (PEM, leaf first, then intermediates), keyFile (PEM)
//   tpm / tpm-ek: swtpmPort (command port of `swtpm socket --tpm2`, control port + 1);
//            "tpm-ek" only prints the endorsement key and the registration ID the SDK derives.
//
// Trust the service's CA with NODE_EXTRA_CA_CERTS (the SDK has no CA option).
//
// Prints exactly one JSON line on stdout:
//   {"ok":true,"result":<registrationState as the SDK returns it>}
//   {"ok":false,"error":{"name":...,"message":...,"statusCode":...}}
// and exits 0 either way; exit 2 means the options were unusable.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const net = require('net');

const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(message) {
  process.stderr.write('register.js: ' + message + '\n');
  process.exit(2);
}

function errorObject(err) {
  const out = {
    name: (err && (err.name || (err.constructor && err.constructor.name))) || 'Error',
    message: (err && err.message) || String(err),
  };
  if (err && err.response && err.response.statusCode) {
    out.statusCode = err.response.statusCode;
  }
  if (err && err.result) {
    out.result = err.result;
  }
  return out;
}

// --- TPM: the SDK's tss.js speaks the Microsoft TPM simulator protocol (a framed command port
// plus a platform port); swtpm speaks raw TPM commands. This bridge translates between them
// without touching the SDK: tss.js connects to the bridge through the SDK's public `customTpm`
// constructor argument (new Tpm(true, host, port)).
const MSSIM_SEND_COMMAND = 8;
const MSSIM_HANDSHAKE = 15;
const MSSIM_SESSION_END = 20;
const MSSIM_STOP = 21;

function u32(n) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

// Sends one raw command to swtpm and resolves with the complete response.
function swtpmTransact(sock, state, command) {
  return new Promise((resolve, reject) => {
    state.pending = { resolve, reject, buf: Buffer.alloc(0) };
    sock.write(command);
  });
}

function startBridge(swtpmPort) {
  return new Promise((resolve, reject) => {
    const commandServer = net.createServer((client) => {
      const tpm = net.connect(swtpmPort, '127.0.0.1');
      const tpmState = { pending: null };
      tpm.on('data', (d) => {
        const p = tpmState.pending;
        if (!p) return;
        p.buf = Buffer.concat([p.buf, d]);
        if (p.buf.length >= 10) {
          const size = p.buf.readUInt32BE(2);
          if (p.buf.length >= size) {
            tpmState.pending = null;
            p.resolve(p.buf.subarray(0, size));
          }
        }
      });
      tpm.on('error', (e) => {
        if (tpmState.pending) tpmState.pending.reject(e);
        client.destroy();
      });
      let inbuf = Buffer.alloc(0);
      let busy = false;
      const pump = async () => {
        if (busy) return;
        busy = true;
        try {
          for (;;) {
            if (inbuf.length < 4) break;
            const code = inbuf.readUInt32BE(0);
            if (code === MSSIM_HANDSHAKE) {
              if (inbuf.length < 8) break;
              inbuf = inbuf.subarray(8);
              client.write(Buffer.concat([u32(1), u32(0), u32(0)]));
            } else if (code === MSSIM_SEND_COMMAND) {
              if (inbuf.length < 9) break;
              const len = inbuf.readUInt32BE(5);
              if (inbuf.length < 9 + len) break;
              const command = inbuf.subarray(9, 9 + len);
              inbuf = inbuf.subarray(9 + len);
              const resp = await swtpmTransact(tpm, tpmState, command);
              client.write(Buffer.concat([u32(resp.length), resp, u32(0)]));
            } else if (code === MSSIM_SESSION_END || code === MSSIM_STOP) {
              client.end();
              tpm.end();
              return;
            } else {
              client.destroy(new Error('unsupported simulator command ' + code));
              tpm.end();
              return;
            }
          }
        } catch (e) {
          client.destroy(e);
        } finally {
          busy = false;
        }
        if (inbuf.length >= 4) setImmediate(pump);
      };
      client.on('data', (d) => {
        inbuf = Buffer.concat([inbuf, d]);
        pump();
      });
      client.on('close', () => tpm.end());
      client.on('error', () => tpm.destroy());
    });
    commandServer.on('error', reject);
    // Platform port (power on, NV on, ...): swtpm runs with startup-clear, so acknowledge only.
    const platformServer = net.createServer((client) => {
      let n = 0;
      client.on('data', (d) => {
        n += d.length;
        while (n >= 4) {
          n -= 4;
          client.write(u32(0));
        }
      });
      client.on('error', () => {});
    });
    // Two consecutive ports, like the simulator: try a few.
    const tryPort = (attempt) => {
      const port = 20000 + Math.floor(Math.random() * 30000);
      commandServer.once('error', () => (attempt < 20 ? tryPort(attempt + 1) : reject(new Error('no bridge port'))));
      commandServer.listen(port, '127.0.0.1', () => {
        platformServer.once('error', () => {
          commandServer.close();
          if (attempt < 20) tryPort(attempt + 1);
          else reject(new Error('no bridge port'));
        });
        platformServer.listen(port + 1, '127.0.0.1', () => {
          resolve({
            port,
            close: () => {
              commandServer.close();
              platformServer.close();
            },
          });
        });
      });
    };
    commandServer.removeAllListeners('error');
    tryPort(0);
  });
}

async function tpmSecurityClient(opts) {
  if (!opts.swtpmPort) fail('tpm needs swtpmPort');
  const { TpmSecurityClient } = require('azure-iot-security-tpm');
  const { Tpm } = require('tss.js');
  const bridge = await startBridge(opts.swtpmPort);
  const client = new TpmSecurityClient(opts.registrationId || undefined, new Tpm(true, '127.0.0.1', bridge.port));
  return { client, bridge };
}

async function main() {
  const raw = process.argv[2];
  if (!raw) fail('usage: node register.js \'<JSON options>\'');
  let opts;
  try {
    opts = JSON.parse(raw);
  } catch (e) {
    fail('options are not JSON: ' + e.message);
  }
  for (const f of ['host', 'idScope']) {
    if (!opts[f] && opts.attestation !== 'tpm-ek') fail('missing option ' + f);
  }

  let security;
  let bridge = null;
  switch (opts.attestation) {
    case 'symmetricKey': {
      const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
      let key = opts.key;
      if (opts.groupKey) {
        // The SDK sample's derivation (register_symkeygroup.js).
        key = crypto
          .createHmac('SHA256', Buffer.from(opts.groupKey, 'base64'))
          .update(opts.registrationId, 'utf8')
          .digest('base64');
      }
      if (!key) fail('symmetricKey needs key or groupKey');
      security = new SymmetricKeySecurityClient(opts.registrationId, key);
      break;
    }
    case 'x509': {
      const { X509Security } = require('azure-iot-security-x509');
      security = new X509Security(opts.registrationId, {
        cert: fs.readFileSync(opts.certFile, 'utf8'),
        key: fs.readFileSync(opts.keyFile, 'utf8'),
      });
      break;
    }
    case 'tpm':
    case 'tpm-ek': {
      const t = await tpmSecurityClient(opts);
      security = t.client;
      bridge = t.bridge;
      break;
    }
    default:
      fail('unknown attestation ' + JSON.stringify(opts.attestation));
  }

  const finish = (obj) => {
    emit(obj);
    if (bridge) bridge.close();
    // The SDK may keep sockets (keep-alive, TPM) open; the answer is out.
    setImmediate(() => process.exit(0));
  };

  if (opts.attestation === 'tpm-ek') {
    security.getEndorsementKey((err, ek) => {
      if (err) return finish({ ok: false, error: errorObject(err) });
      security.getRegistrationId((err2, id) => {
        if (err2) return finish({ ok: false, error: errorObject(err2) });
        finish({ ok: true, result: { endorsementKey: ek.toString('base64'), registrationId: id } });
      });
    });
    return;
  }

  const client = ProvisioningDeviceClient.create(opts.host, opts.idScope, new Http(), security);
  if (opts.payload !== undefined) client.setProvisioningPayload(opts.payload);
  client.register((err, result) => {
    if (err) finish({ ok: false, error: errorObject(err) });
    else finish({ ok: true, result });
  });
}

main().catch((e) => {
  emit({ ok: false, error: errorObject(e) });
  process.exit(0);
});
