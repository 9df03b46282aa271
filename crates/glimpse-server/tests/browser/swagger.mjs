// Drive Swagger UI (/docs) in headless chromium as a newcomer would: Authorize with the API key,
// open POST /api/image-classification/clip, "Try it out", choose an image, keep every other
// pre-filled default, Execute. The live response must be 200 with the seed's answer shape.
//
//   node swagger.mjs BASE_URL API_KEY
//   env: CHROMIUM (default /usr/bin/chromium), GLIMPSE_SCREENSHOT (default <repo>/target/swagger.png)
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../../../..");
const [base, key] = process.argv.slice(2);
if (!base || !key) {
  console.error("usage: node swagger.mjs BASE_URL API_KEY");
  process.exit(2);
}
const image = path.join(repo, "tests/fixtures/images/astronaut.jpg");
const shot = process.env.GLIMPSE_SCREENSHOT || path.join(repo, "target/swagger.png");

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), "glimpse-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  viewport: { width: 1200, height: 1000 },
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let status = 0;
const page = browser.pages()[0] || (await browser.newPage());
try {
  page.on("pageerror", (e) => { console.error("[page error]", e.message); status = 1; });
  await page.goto(base + "/docs", { waitUntil: "load" });
  // Authorize: the API key is the first scheme offered.
  await page.locator("button.authorize").first().click();
  const dialog = page.locator(".auth-container").first();
  const first = (await dialog.locator("h4").first().textContent()) || "";
  console.log("first scheme:", first.trim());
  check(first.includes("api_key"), "the API key is the first scheme in Authorize");
  await dialog.locator("input").first().fill(key);
  await dialog.locator("button.authorize").first().click();
  await page.locator(".dialog-ux .close-modal").first().click();

  const op = page.locator("#operations-classification-clip_post");
  await op.locator(".opblock-summary").first().click();
  await op.locator("button.try-out__btn").click();
  await op.locator('input[type="file"]').setInputFiles(image);
  // Every other field keeps the value Swagger filled in itself.
  const filled = await op.locator(".parameters input[type=text], .parameters select").evaluateAll(
    (els) => els.map((e) => [e.getAttribute("placeholder") || e.name || e.tagName, e.value]));
  console.log("pre-filled:", JSON.stringify(filled));
  await op.locator("button.execute").click();
  const code = op.locator(".live-responses-table .response .response-col_status").first();
  await code.waitFor({ timeout: 30000 });
  const got = (await code.textContent()).trim();
  const body = (await op.locator(".live-responses-table .response-col_description pre").first().textContent()) || "";
  console.log("status:", got, "body:", body.slice(0, 300));
  check(got.startsWith("200"), `Execute answered ${got}: ${body}`);
  const answer = JSON.parse(body);
  check(Array.isArray(answer.predictions) && answer.predictions.length === 6, "six default labels");
  fs.mkdirSync(path.dirname(shot), { recursive: true });
  await page.screenshot({ path: shot, fullPage: false });
} catch (e) {
  console.error(e.stack || String(e));
  try { await page.screenshot({ path: shot, fullPage: true }); } catch (_) { /* best effort */ }
  status = 1;
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(status);
