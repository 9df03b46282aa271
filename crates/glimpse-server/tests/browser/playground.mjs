// Drive the playground in headless chromium: key, upload, Classify, then check the chart,
// the result, the credits and the raw JSON; save a screenshot. Exit status 0 only on success.
//
//   node playground.mjs BASE_URL API_KEY
//   env: CHROMIUM (default /usr/bin/chromium), GLIMPSE_SCREENSHOT (default <repo>/target/playground.png),
//        GLIMPSE_EXPECT_CREDITS (the X-Credits-Remaining value the page must show, optional)
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../../../..");
const [base, key] = process.argv.slice(2);
if (!base || !key) {
  console.error("usage: node playground.mjs BASE_URL API_KEY");
  process.exit(2);
}
const image = path.join(repo, "tests/fixtures/images/astronaut.jpg");
const shot = process.env.GLIMPSE_SCREENSHOT || path.join(repo, "target/playground.png");
const labels = ["car", "document", "motorcycle", "truck", "person", "other"];

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), "glimpse-chromium-"));
// A persistent context on a fresh, throw-away profile folder (playwright's way of saying
// --user-data-dir), so no state from an earlier run can leak in.
const browser = await chromium.launchPersistentContext(profile, {
  viewport: { width: 1100, height: 900 },
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let status = 0;
const page = browser.pages()[0] || (await browser.newPage());
try {
  page.on("console", (m) => console.log("[page]", m.type(), m.text()));
  page.on("pageerror", (e) => { console.error("[page error]", e.message); status = 1; });
  // Nothing may leave the test server: the page is self-contained.
  const origin = new URL(base).origin;
  page.on("request", (r) => {
    if (!r.url().startsWith(origin) && !r.url().startsWith("blob:") && !r.url().startsWith("data:")) {
      console.error("[external request]", r.url());
      status = 1;
    }
  });

  await page.goto(base + "/", { waitUntil: "load" });
  await page.getByLabel("X-API-Key").fill(key);
  await page.getByLabel("Choose an image file").setInputFiles(image);
  check((await page.locator("#labels").inputValue()) === labels.join(","), "default labels");
  await page.getByRole("button", { name: "Classify" }).click();

  await page.waitForFunction(() => document.querySelectorAll("#chart .bar").length === 6,
    null, { timeout: 30000 });
  const bars = await page.$$eval("#chart .bar", (els) =>
    els.map((e) => ({ label: e.dataset.label, width: parseFloat(e.querySelector(".fill").style.width) })));
  console.log("bars:", JSON.stringify(bars));
  check(JSON.stringify(bars.map((b) => b.label).sort()) === JSON.stringify([...labels].sort()), "one bar per label");
  const sum = bars.reduce((a, b) => a + b.width, 0);
  check(Math.abs(sum - 100) < 1, `bar widths sum to 100%, got ${sum}`);

  const raw = JSON.parse(await page.locator("#raw").textContent());
  const result = (await page.locator("#result").textContent()).trim();
  console.log("result:", result);
  check(labels.includes(raw.result), "result is one of the labels");
  check(result.startsWith(raw.result + " ("), `result shown (${result}) is the JSON's (${raw.result})`);
  const top = bars.reduce((a, b) => (b.width > a.width ? b : a));
  check(top.label === raw.result, "the longest bar is the result");

  const credits = (await page.locator("#credits").textContent()).trim();
  console.log("credits:", credits);
  check(/^\d+$/.test(credits), "credits shown as a number");
  if (process.env.GLIMPSE_EXPECT_CREDITS) {
    check(credits === process.env.GLIMPSE_EXPECT_CREDITS, `credits ${credits} = ${process.env.GLIMPSE_EXPECT_CREDITS}`);
  }
  check(await page.locator("#error").isHidden(), "no error shown");

  // A newcomer is told where a key comes from, in the key's real shape.
  const help = await page.locator("#key-help").textContent();
  check(help.includes("glimpse keys create"), "the key hint says how to make a key");
  check((await page.getByLabel("X-API-Key").getAttribute("placeholder")).startsWith("gk_"), "placeholder gk_…");

  // ViT: the categories chart and the ImageNet top 5 on the page, not only in the raw JSON.
  await page.getByLabel("ViT (ImageNet classes)").check();
  await page.getByRole("button", { name: "Classify" }).click();
  await page.waitForFunction(() => document.querySelectorAll("#imagenet li").length === 5,
    null, { timeout: 30000 });
  check(await page.locator("#imagenet-box").isVisible(), "ImageNet top 5 shown");
  const top5 = await page.$$eval("#imagenet li", (els) => els.map((e) => e.textContent));
  console.log("imagenet:", JSON.stringify(top5));
  const vitRaw = JSON.parse(await page.locator("#raw").textContent());
  check(top5[0].startsWith(vitRaw.imagenet[0].label), "top-5 list follows the JSON");
  check((await page.locator("#chart .bar").count()) === 6, "six category bars");

  fs.mkdirSync(path.dirname(shot), { recursive: true });
  await page.screenshot({ path: shot, fullPage: true });
  console.log("screenshot:", shot);

  // A file that is not an image: a sentence, not a broken-image icon.
  const notImage = path.join(profile, "notes.txt");
  fs.writeFileSync(notImage, "not an image");
  await page.getByLabel("Choose an image file").setInputFiles(notImage);
  await page.locator("#preview-note").waitFor({ state: "visible", timeout: 5000 });
  check(await page.locator("#preview").isHidden(), "no broken preview for a text file");
  await page.getByLabel("CLIP (zero-shot labels)").check();

  // The key survives a reload (localStorage); a wrong key shows the API's error.
  await page.reload({ waitUntil: "load" });
  check((await page.getByLabel("X-API-Key").inputValue()) === key, "key kept in localStorage");
  // An answer first, so there is something on screen that the error must clear.
  await page.getByLabel("Choose an image file").setInputFiles(image);
  await page.getByRole("button", { name: "Classify" }).click();
  await page.waitForFunction(() => document.querySelectorAll("#chart .bar").length === 6,
    null, { timeout: 30000 });
  await page.getByLabel("X-API-Key").fill("wrong-key");
  await page.getByRole("button", { name: "Classify" }).click();
  await page.locator("#error").waitFor({ state: "visible", timeout: 15000 });
  const err = await page.locator("#error").textContent();
  console.log("error shown:", err);
  check(/\(UNAUTHORIZED\)|\(INVALID_API_KEY\)|\([A-Z_]+\)$/.test(err), "error shows {message, code}");
  // Nothing of the earlier answer stays under the error.
  check((await page.locator("#chart .bar").count()) === 0, "chart cleared after the error");
  check((await page.locator("#result").textContent()).trim() === "–", "result cleared after the error");
  check(await page.locator("#imagenet-box").isHidden(), "top 5 cleared after the error");
} catch (e) {
  console.error(e.stack || String(e));
  try { await page.screenshot({ path: shot, fullPage: true }); } catch (_) { /* best effort */ }
  status = 1;
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(status);
