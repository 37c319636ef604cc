// Create-and-send on the staff pages (/admin/envelopes/new), no library and no inline script.
// Step 1: party rows picked from the address book (or typed), added, removed and reordered.
// Step 2: text boxes dragged onto the server-rendered page images; each becomes hidden inputs
// with its rectangle in PDF points (origin bottom-left), converted from the image's pixels.
(function () {
  "use strict";

  // --- step 1: parties -------------------------------------------------------------------

  function renumberParties(body) {
    Array.prototype.forEach.call(body.rows, function (row, index) {
      row.querySelector(".order").textContent = String(index + 1);
    });
  }

  function fillFromContact(input) {
    var list = document.getElementById("contacts");
    var option = Array.prototype.find.call(list.options, function (o) {
      return o.value === input.value;
    });
    if (!option) {
      return false;
    }
    var row = input.closest("tr");
    row.querySelector("[name=party_company]").value = option.getAttribute("data-company");
    row.querySelector("[name=party_name]").value = option.getAttribute("data-name");
    row.querySelector("[name=party_email]").value = option.getAttribute("data-email");
    return true;
  }

  // The page lists only the first contacts; as the sender types, the address book is asked for
  // the ones matching the text so far, and they replace the picker's suggestions.
  var lookupTimer = null;
  var lookupSeq = 0;

  function lookupContacts(input) {
    var query = input.value.trim();
    if (!query) {
      return;
    }
    window.clearTimeout(lookupTimer);
    lookupTimer = window.setTimeout(function () {
      var seq = ++lookupSeq;
      fetch("/admin/address-book/lookup?q=" + encodeURIComponent(query), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
        .then(function (response) { return response.ok ? response.json() : []; })
        .then(function (contacts) {
          if (seq !== lookupSeq) {
            return; // a newer lookup is on its way
          }
          var list = document.getElementById("contacts");
          list.replaceChildren.apply(list, contacts.map(function (c) {
            var option = document.createElement("option");
            option.value = c.label;
            option.setAttribute("data-company", c.company);
            option.setAttribute("data-name", c.name);
            option.setAttribute("data-email", c.email);
            return option;
          }));
          fillFromContact(input);
        })
        .catch(function () { /* offline: the suggestions already on the page stay */ });
    }, 150);
  }

  function setupParties() {
    var body = document.getElementById("party-rows");
    var template = document.getElementById("party-row-template");
    if (!body || !template) {
      return;
    }
    document.getElementById("add-party").addEventListener("click", function () {
      var row = template.content.querySelector("tr").cloneNode(true);
      body.appendChild(row);
      renumberParties(body);
      row.querySelector(".pick").focus();
    });
    body.addEventListener("click", function (event) {
      var button = event.target.closest("button");
      if (!button) {
        return;
      }
      var row = button.closest("tr");
      if (button.classList.contains("move-up") && row.previousElementSibling) {
        body.insertBefore(row, row.previousElementSibling);
      } else if (button.classList.contains("move-down") && row.nextElementSibling) {
        body.insertBefore(row.nextElementSibling, row);
      } else if (button.classList.contains("remove-row")) {
        if (body.rows.length > 1) {
          row.remove();
        } else {
          row.querySelectorAll("input").forEach(function (input) { input.value = ""; });
        }
      }
      renumberParties(body);
      if (button.isConnected) {
        button.focus();
      }
    });
    ["input", "change"].forEach(function (type) {
      body.addEventListener(type, function (event) {
        if (event.target.classList.contains("pick") && !fillFromContact(event.target)) {
          lookupContacts(event.target);
        }
      });
    });
  }

  // --- step 2: text boxes ------------------------------------------------------------------

  function number(element, name) {
    return parseFloat(element.getAttribute("data-" + name));
  }

  // The image shows the page's visible box (CropBox within MediaBox) turned clockwise by its
  // /Rotate, as a viewer shows it; boxes are kept in PDF user space (x to the right from the
  // unrotated page's left edge, y upwards from its bottom edge), which is what the signed PDF,
  // the API and the mappings use. These two convert between the two, like gateway/pages/render.py.
  function pdfPoint(page, clientX, clientY) {
    var r = page.getBoundingClientRect();
    var fx = Math.min(Math.max((clientX - r.left) / r.width, 0), 1);
    var fy = Math.min(Math.max((clientY - r.top) / r.height, 0), 1);
    var left = number(page, "left");
    var bottom = number(page, "bottom");
    var right = number(page, "right");
    var top = number(page, "top");
    var width = right - left;
    var height = top - bottom;
    switch (number(page, "rotation")) {
      case 90:
        return { x: left + fy * width, y: bottom + fx * height };
      case 180:
        return { x: right - fx * width, y: bottom + fy * height };
      case 270:
        return { x: right - fy * width, y: top - fx * height };
      default:
        return { x: left + fx * width, y: top - fy * height };
    }
  }

  function place(element, page, x1, y1, x2, y2) {
    var left = number(page, "left");
    var bottom = number(page, "bottom");
    var right = number(page, "right");
    var top = number(page, "top");
    var width = right - left;
    var height = top - bottom;
    var at; // left, top, width, height as fractions of the image
    switch (number(page, "rotation")) {
      case 90:
        at = [(y1 - bottom) / height, (x1 - left) / width, (y2 - y1) / height, (x2 - x1) / width];
        break;
      case 180:
        at = [(right - x2) / width, (y1 - bottom) / height, (x2 - x1) / width, (y2 - y1) / height];
        break;
      case 270:
        at = [(top - y2) / height, (right - x2) / width, (y2 - y1) / height, (x2 - x1) / width];
        break;
      default:
        at = [(x1 - left) / width, (top - y2) / height, (x2 - x1) / width, (y2 - y1) / height];
    }
    element.style.left = (100 * at[0]) + "%";
    element.style.top = (100 * at[1]) + "%";
    element.style.width = (100 * at[2]) + "%";
    element.style.height = (100 * at[3]) + "%";
  }

  function valueOf(row, name) {
    return row.querySelector("input[name=" + name + "]").value;
  }

  function drawBoxes() {
    document.querySelectorAll(".placed-box").forEach(function (box) { box.remove(); });
    var rows = document.querySelectorAll("#boxes .box-row");
    rows.forEach(function (row, index) {
      var page = document.querySelector(
        ".compose-page[data-doc='" + valueOf(row, "box_document") + "'][data-page='" +
          valueOf(row, "box_page") + "']"
      );
      row.querySelector(".remove-box").value = String(index);
      if (!page) {
        return;
      }
      var box = document.createElement("div");
      box.className = "placed-box party-" + (parseInt(valueOf(row, "box_party"), 10) % 6);
      box.textContent = valueOf(row, "box_label");
      place(box, page, parseFloat(valueOf(row, "box_x1")), parseFloat(valueOf(row, "box_y1")),
        parseFloat(valueOf(row, "box_x2")), parseFloat(valueOf(row, "box_y2")));
      page.appendChild(box);
    });
    document.getElementById("box-count").textContent = String(rows.length);
    document.getElementById("no-boxes").hidden = rows.length > 0;
  }

  function hidden(name, value) {
    var input = document.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = String(value);
    return input;
  }

  function cell(row) {
    var td = document.createElement("td");
    row.appendChild(td);
    return td;
  }

  function showError(message) {
    var error = document.getElementById("drag-error");
    error.textContent = message;
    error.hidden = !message;
  }

  function addBox(page, a, b) {
    var label = document.getElementById("new_label").value.trim();
    var party = document.getElementById("new_party");
    if (!label) {
      showError("項目名を入力してから、ページ上をドラッグしてください。");
      document.getElementById("new_label").focus();
      return;
    }
    showError("");
    var round = function (v) { return Math.round(v * 100) / 100; };
    var required = document.getElementById("new_required").checked;
    var row = document.createElement("tr");
    row.className = "box-row";
    var where = cell(row);
    where.textContent = "文書" + (parseInt(page.getAttribute("data-doc"), 10) + 1) + " " +
      page.getAttribute("data-page") + "ページ";
    [
      ["box_document", page.getAttribute("data-doc")],
      ["box_party", party.value],
      ["box_page", page.getAttribute("data-page")],
      ["box_x1", round(Math.min(a.x, b.x))],
      ["box_y1", round(Math.min(a.y, b.y))],
      ["box_x2", round(Math.max(a.x, b.x))],
      ["box_y2", round(Math.max(a.y, b.y))],
      ["box_label", label],
      ["box_required", required ? "1" : "0"],
      ["box_max", document.getElementById("new_max").value || "200"]
    ].forEach(function (pair) { where.appendChild(hidden(pair[0], pair[1])); });
    var what = cell(row);
    what.appendChild(document.createTextNode(party.options[party.selectedIndex].text));
    what.appendChild(document.createElement("br"));
    var name = document.createElement("span");
    name.className = "box-label";
    name.textContent = label;
    what.appendChild(name);
    if (required) {
      var mark = document.createElement("span");
      mark.className = "required";
      mark.textContent = " 必須";
      what.appendChild(mark);
    }
    var remove = document.createElement("button");
    remove.type = "submit";
    remove.name = "remove";
    remove.className = "small remove-box";
    remove.textContent = "削除";
    cell(row).appendChild(remove);
    document.querySelector("#boxes tbody").appendChild(row);
    document.getElementById("new_label").value = "";
    drawBoxes();
  }

  function setupDrawing(page) {
    var start = null;
    var startClient = null;
    var drawing = null;
    page.addEventListener("pointerdown", function (event) {
      if (event.button !== 0) {
        return;
      }
      event.preventDefault();
      start = pdfPoint(page, event.clientX, event.clientY);
      startClient = [event.clientX, event.clientY];
      drawing = document.createElement("div");
      drawing.className = "drawing";
      page.appendChild(drawing);
      page.setPointerCapture(event.pointerId);
    });
    page.addEventListener("pointermove", function (event) {
      if (!drawing) {
        return;
      }
      var here = pdfPoint(page, event.clientX, event.clientY);
      place(drawing, page, Math.min(start.x, here.x), Math.min(start.y, here.y),
        Math.max(start.x, here.x), Math.max(start.y, here.y));
    });
    var finish = function (event, keep) {
      if (!drawing) {
        return;
      }
      drawing.remove();
      drawing = null;
      // A click or a tiny drag places nothing.
      var big = Math.abs(event.clientX - startClient[0]) > 4 &&
        Math.abs(event.clientY - startClient[1]) > 4;
      if (keep && big) {
        addBox(page, start, pdfPoint(page, event.clientX, event.clientY));
      }
    };
    page.addEventListener("pointerup", function (event) { finish(event, true); });
    page.addEventListener("pointercancel", function (event) { finish(event, false); });
  }

  function setupBoxes() {
    var form = document.getElementById("fields-form");
    if (!form) {
      return;
    }
    document.querySelectorAll(".compose-page").forEach(setupDrawing);
    document.querySelector("#boxes tbody").addEventListener("click", function (event) {
      var button = event.target.closest(".remove-box");
      if (button) {
        event.preventDefault();
        button.closest("tr").remove();
        drawBoxes();
      }
    });
    // Enter in the settings must not submit the form (its first button adds a typed box).
    form.addEventListener("keydown", function (event) {
      var inNumbers = event.target.closest && event.target.closest("#by-numbers");
      if (event.key === "Enter" && event.target.tagName === "INPUT" && !inNumbers) {
        event.preventDefault();
      }
    });
    drawBoxes();
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupParties();
    setupBoxes();
  });
})();
