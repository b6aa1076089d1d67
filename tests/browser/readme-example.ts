import init, { TandemClient } from "tandem-client";

// Loads the WebAssembly module: by default `tandem_client_bg.wasm` next to the package's JS
// (see "Bundlers" for pages built with one).
await init();

const options = { mediatorUrl: "wss://chat.example.org", database: "tandem-main", deviceLabel: "Laptop" };
// One IndexedDB database per device: open the device if this browser holds it, else make one.
const client = (await TandemClient.hasIdentity(options.database))
  ? await TandemClient.open(options)
  : await TandemClient.create(options);
console.log("my Tandem ID:", client.identity);
client.on("message", ({ message }) => {
  if (message && !message.outgoing) console.log(`${message.sender}: ${message.text}`);
});

// Writing needs a contact: add it by ID and wait for the directory lookup's `contact` event.
const friend = "ECHOECHO";
if (!client.contacts().some((c) => c.identity === friend)) {
  await new Promise((resolve, reject) => {
    client.on("contact", ({ identity }) => { if (identity === friend) resolve(identity); });
    client.on("contactNotFound", ({ identity, message }) => { if (identity === friend) reject(new Error(message)); });
    client.addContact(friend);
  });
}
client.sendText(`contact/${friend}`, "hello");
