/* The images attached to the message being written: picked, pasted or dropped,
 * read as data: URLs and checked against the server's limits before sending. */
import { h } from "./dom.js";

const MAX_IMAGES = 10; // per message
const MAX_IMAGE_BASE64 = 5 * 1024 * 1024; // per image, base64 text after the data: prefix

export class Attachments {
  /** `showError(text)` tells the user what was refused. */
  constructor({ form, input, fileInput, list }, showError) {
    this.list = list;
    this.fileInput = fileInput;
    this.showError = showError;
    this.images = []; // {name, dataUrl}
    input.addEventListener("paste", (e) => {
      const files = [...(e.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
      if (files.length) {
        e.preventDefault();
        this.add(files);
      }
    });
    form.addEventListener("dragover", (e) => e.preventDefault());
    form.addEventListener("drop", (e) => {
      e.preventDefault();
      this.add([...(e.dataTransfer?.files || [])]);
    });
    fileInput.addEventListener("change", () => {
      this.add([...fileInput.files]);
      fileInput.value = "";
    });
  }

  get count() {
    return this.images.length;
  }

  /** The images to send with a message; the composer starts empty again. */
  take() {
    const images = this.images;
    this.images = [];
    this.render();
    return images;
  }

  /** Put back the images of a message that was not sent. */
  restore(images) {
    this.images = images;
    this.render();
  }

  async add(files) {
    for (const file of files) {
      if (!file.type.startsWith("image/")) {
        this.showError(`${file.name} is not an image.`);
        continue;
      }
      if (this.images.length >= MAX_IMAGES) {
        this.showError(`At most ${MAX_IMAGES} images per message.`);
        return;
      }
      // Its base64 size is known from its byte size: a file over the limit is refused without reading it
      // (reading megabytes into a data: URL takes seconds on a busy machine, and the answer is the same).
      if (4 * Math.ceil(file.size / 3) > MAX_IMAGE_BASE64) {
        this.tooLarge(file, 4 * Math.ceil(file.size / 3));
        continue;
      }
      let dataUrl;
      try {
        dataUrl = await readDataUrl(file);
      } catch (err) {
        this.showError(`Could not read ${file.name}.`);
        continue;
      }
      const size = dataUrl.length - dataUrl.indexOf(",") - 1;
      if (size > MAX_IMAGE_BASE64) {
        this.tooLarge(file, size);
        continue;
      }
      if (this.images.length >= MAX_IMAGES) {
        this.showError(`At most ${MAX_IMAGES} images per message.`);
        return;
      }
      this.images.push({ name: file.name || "pasted image", dataUrl });
      this.render();
    }
  }

  tooLarge(file, base64Size) {
    const mb = (base64Size / 1024 / 1024).toFixed(1);
    this.showError(`${file.name || "The image"} is too large: ${mb} MB as base64; the limit is 5 MB.`);
  }

  render() {
    const items = this.images.map((img, i) => h("div", { class: "attachment" },
      h("img", { src: img.dataUrl, alt: img.name }),
      h("button", {
        class: "remove", type: "button", "aria-label": `Remove ${img.name}`,
        onclick: () => { this.images.splice(i, 1); this.render(); },
      }, "×")));
    this.list.replaceChildren(...items);
    this.list.hidden = items.length === 0;
  }
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
