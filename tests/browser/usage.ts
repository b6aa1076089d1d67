// Type-checked against the package's .d.ts (`npm run typecheck`, run by browser_e2e.rs): the
// calls an app makes, with the option, value and event types the package exports. Not run.
import init, { TandemClient } from 'tandem-client';
import type { Message, MessageState, ConnectionEvent, Contact, Settings, Device } from 'tandem-client';

export async function app(mediatorUrl: string): Promise<void> {
  await init();
  const exists: boolean = await TandemClient.hasIdentity('app');
  const client: TandemClient = await TandemClient.create({ mediatorUrl, database: 'app' });
  const identity: string = client.identity;
  const online: boolean = client.isOnline;
  client.on('connection', (e: ConnectionEvent) => {
    if (e.state === 'disconnected') console.log(e.code, e.reason, e.retryAt, e.stopped);
  });
  client.on('message', ({ conversation, message }) => {
    const m: Message | null = message;
    const s: MessageState | undefined = m?.state;
    console.log(conversation, s);
  });
  client.on('syncProgress', ({ received, total }) => console.log(received / total));
  const key: string = client.sendText(`contact/${identity}`, 'hi');
  client.editMessage(key, 'hi, edited');
  client.deleteMessage(key, true);
  client.on('messageChanged', ({ key: changed, message }) => {
    const edited: number | null | undefined = message?.editedAt;
    const deleted: number | null | undefined = message?.deletedAt;
    console.log(changed, edited, deleted);
  });
  const list: Message[] = client.messages(`contact/${identity}`);
  const contacts: Contact[] = client.contacts();
  const settings: Settings = client.settings();
  client.updateSettings({ readReceipts: !settings.readReceipts });
  const devices: Device[] = await client.listDevices();
  const backup: string = client.exportBackup('a long password');
  const again = await TandemClient.importBackup({ backup, password: 'a long password', mediatorUrl, database: 'other' });
  console.log(exists, key, list.length, contacts.length, devices.length, online, again.deviceId);
  // @ts-expect-error: the event name is checked
  client.on('no-such-event', () => {});
  client.close();
}
