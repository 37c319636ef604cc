// Signing pages: document tabs, text boxes placed on the pages, checklist, confirmation dialogs.
// No inline script (the pages' Content-Security-Policy allows only this file).
(function () {
  "use strict";

  function showTab(id) {
    document.querySelectorAll(".doc").forEach(function (panel) {
      panel.hidden = panel.id !== id;
    });
    document.querySelectorAll(".tab").forEach(function (tab) {
      var active = tab.getAttribute("data-tab") === id;
      tab.classList.toggle("active", active);
      tab.setAttribute("aria-selected", active ? "true" : "false");
    });
  }

  function tabOf(element) {
    var panel = element.closest(".doc");
    return panel ? panel.id : null;
  }

  function place() {
    // Sizes come from data attributes (percent of the page) so no inline style is needed.
    document.querySelectorAll(".page").forEach(function (page) {
      page.style.aspectRatio = "1 / " + page.getAttribute("data-ratio");
    });
    document.querySelectorAll(".field-box").forEach(function (box) {
      box.style.left = box.getAttribute("data-left") + "%";
      box.style.top = box.getAttribute("data-top") + "%";
      box.style.width = box.getAttribute("data-width") + "%";
      box.style.height = box.getAttribute("data-height") + "%";
    });
  }

  function countFilled() {
    var filled = 0;
    document.querySelectorAll(".field-box[required]").forEach(function (box) {
      if (box.value.trim() !== "") {
        filled += 1;
      }
    });
    var counter = document.getElementById("filled-count");
    if (counter) {
      counter.textContent = String(filled);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    place();
    countFilled();
    document.querySelectorAll(".tab").forEach(function (tab) {
      tab.addEventListener("click", function () {
        showTab(tab.getAttribute("data-tab"));
      });
    });
    document.querySelectorAll(".check-item").forEach(function (item) {
      item.addEventListener("click", function (event) {
        event.preventDefault();
        showTab(item.getAttribute("data-tab"));
        var box = document.getElementById(item.getAttribute("data-field"));
        if (box) {
          box.scrollIntoView({ block: "center" });
          box.focus();
        }
      });
    });
    document.querySelectorAll(".field-box").forEach(function (box) {
      box.addEventListener("input", countFilled);
    });

    var form = document.getElementById("complete-form");
    var completeButton = document.getElementById("complete-button");
    var confirmDialog = document.getElementById("confirm-dialog");
    if (completeButton && form && confirmDialog) {
      completeButton.addEventListener("click", function () {
        var boxes = Array.prototype.slice.call(form.elements);
        var invalid = boxes.filter(function (el) {
          return el.classList && el.classList.contains("field-box") && !el.checkValidity();
        });
        if (invalid.length > 0) {
          showTab(tabOf(invalid[0]));
          invalid[0].reportValidity();
          return;
        }
        confirmDialog.showModal();
      });
      form.addEventListener("submit", function () {
        var confirmButton = document.getElementById("confirm-complete");
        if (confirmButton) {
          // A second click would only be refused by the server; avoid the confusion.
          window.setTimeout(function () { confirmButton.disabled = true; }, 0);
        }
      });
    }
    [["decline-button", "decline-dialog"], ["forward-button", "forward-dialog"]].forEach(
      function (pair) {
        var button = document.getElementById(pair[0]);
        var dialog = document.getElementById(pair[1]);
        if (button && dialog) {
          button.addEventListener("click", function () { dialog.showModal(); });
        }
      }
    );
    // Staff pages: forms that change a contract for good (send, cancel) ask first.
    document.querySelectorAll("form[data-confirm]").forEach(function (confirmed) {
      confirmed.addEventListener("submit", function (event) {
        if (!window.confirm(confirmed.getAttribute("data-confirm"))) {
          event.preventDefault();
        }
      });
    });
    document.querySelectorAll("[data-close]").forEach(function (button) {
      button.addEventListener("click", function () {
        button.closest("dialog").close();
      });
    });
  });
})();
